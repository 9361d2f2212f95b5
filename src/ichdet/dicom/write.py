"""Build CT DICOM datasets from arrays (used by ``ichdet synth`` and by tests for fixtures)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from ichdet.dicom.read import quiet_pydicom
from ichdet.util.atomic import atomic_path

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def ct_dataset(
    stored: np.ndarray,
    *,
    intercept: float | str = -1024.0,
    slope: float = 1.0,
    bits_stored: int = 16,
    pixel_representation: int | None = None,
    position: Sequence[float] = (0.0, 0.0, 0.0),
    orientation: Sequence[float] = AXIAL,
    pixel_spacing: Sequence[float] = (0.5, 0.5),
    slice_thickness: float = 5.0,
    sop_instance_uid: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    patient_id: str = "ID_patient",
    instance_number: int = 1,
    window_center: object = 40,
    window_width: object = 80,
    photometric: str = "MONOCHROME2",
    modality: str = "CT",
    padding_value: int | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> pydicom.Dataset:
    """A single-frame CT Image Storage dataset holding ``stored`` (int16 or uint16, H x W).

    ``intercept`` may be a string such as ``"-1024.000000"`` (as some scanners write it).
    UIDs default to fresh valid UIDs; RSNA-style ``ID_...`` strings are accepted as given.
    """
    with quiet_pydicom():  # RSNA-style ID_... UIDs are invalid UIDs, on purpose
        stored = np.asarray(stored)
        if pixel_representation is None:
            pixel_representation = 1 if stored.dtype.kind == "i" else 0
        sop = sop_instance_uid or generate_uid()
        ds = pydicom.Dataset()
        ds.file_meta = _file_meta(sop, transfer_syntax)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study_instance_uid or generate_uid()
        ds.SeriesInstanceUID = series_instance_uid or generate_uid()
        ds.PatientID = patient_id
        ds.Modality = modality
        ds.InstanceNumber = instance_number
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
        ds.SliceThickness = f"{slice_thickness:.6f}"
        ds.PhotometricInterpretation = photometric
        ds.RescaleIntercept = intercept if isinstance(intercept, str) else f"{intercept:g}"
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleType = "HU"
        ds.WindowCenter = window_center
        ds.WindowWidth = window_width
        _set_pixels(ds, stored, bits_stored, pixel_representation, padding_value)
    return ds


def _file_meta(sop: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _set_pixels(
    ds: pydicom.Dataset,
    stored: np.ndarray,
    bits_stored: int,
    pixel_representation: int,
    padding_value: int | None,
) -> None:
    """The image pixel module: 16-bit words in the byte order of the transfer syntax."""
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = pixel_representation
    if padding_value is not None:
        # PixelPaddingValue's VR (US or SS) follows PixelRepresentation.
        ds.add_new(0x00280120, "SS" if pixel_representation == 1 else "US", int(padding_value))
    data = stored.astype(np.int16 if pixel_representation == 1 else np.uint16)
    if ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian:
        data = data.astype(data.dtype.newbyteorder(">"))
    ds.PixelData = data.tobytes()
    ds["PixelData"].VR = "OW"


def save_dataset(ds: pydicom.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` atomically with its transfer syntax's encoding; returns the path."""
    syntax = ds.file_meta.TransferSyntaxUID
    with atomic_path(path) as tmp, quiet_pydicom():
        ds.save_as(
            tmp,
            enforce_file_format=True,
            implicit_vr=syntax == ImplicitVRLittleEndian,
            little_endian=syntax != ExplicitVRBigEndian,
        )
    return Path(path)
