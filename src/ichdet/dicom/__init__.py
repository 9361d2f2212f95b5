"""DICOM in and out: read a slice to Hounsfield units (``read``), write CT files (``write``),
and find inputs in folders and zip archives (``sources``).

``read_slice``, ``read_meta``, ``Slice``, ``SliceMeta`` and ``DicomError`` are re-exported here.
"""

from ichdet.dicom.read import DicomError, Slice, SliceMeta, read_meta, read_slice

__all__ = ["DicomError", "Slice", "SliceMeta", "read_meta", "read_slice"]
