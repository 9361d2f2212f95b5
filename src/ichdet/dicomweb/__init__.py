"""DICOMweb in and out: QIDO-RS, WADO-RS, STOW-RS (dicomweb-client)."""
