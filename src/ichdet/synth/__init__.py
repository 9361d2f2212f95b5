"""Labelled synthetic head-CT studies: 3D phantoms (``phantom``) written as RSNA-style DICOM
datasets (``studies``)."""
