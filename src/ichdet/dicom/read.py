"""Read CT DICOM slices into Hounsfield units.

``read_slice(source)`` returns a :class:`Slice` with ``hu`` (float32, H x W, Hounsfield units) and
``meta`` (:class:`SliceMeta`). ``read_meta(source)`` reads the header only (no pixel decode).
A source is a path, ``bytes``, or a binary file-like object (uploads, zip members).

Real archives are messy; handled here (see shared/DESIGN.md):

- the RSNA 12-bit bug: BitsStored 12, unsigned, intercept > -100 -> add 1000 to the stored values,
  wrap at 4096 and use intercept -1000 (the fix the top RSNA solutions used);
- scanner padding outside the field of view (PixelPaddingValue, or values far below air such as
  -2000 or -3024 HU) -> set to air (``AIR_HU``);
- MONOCHROME1 -> stored values inverted within their bit range before the rescale;
- signed/unsigned storage, implicit/explicit VR, big endian, float-string intercepts;
- compressed transfer syntaxes (decoded by pydicom's plugins; python-gdcm is a dependency);
- RSNA's ``ID_...`` identifiers, which are not valid UIDs: read without warnings.

Bad input raises :class:`DicomError` (a ValueError) whose message names the source and the reason.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import pydicom
import pydicom.config
from pydicom.errors import InvalidDicomError

Source = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes]

#: HU given to padded pixels outside the scanner's field of view.
AIR_HU = -1024.0
#: Stored values that rescale below this are padding, not tissue (air is -1000 HU).
PADDING_BELOW_HU = -1100.0

FIX_RSNA_12BIT = "rsna_12bit_intercept"
FIX_PADDING = "padding_to_air"
FIX_MONOCHROME1 = "monochrome1_inverted"

#: Header tags that read_meta needs; a fast header scan keeps only these.
META_TAGS = [
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "Modality",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "Rows",
    "Columns",
    "WindowCenter",
    "WindowWidth",
    "RescaleIntercept",
    "RescaleSlope",
    "BitsStored",
    "BitsAllocated",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "NumberOfFrames",
    "InstanceNumber",
    "SliceLocation",
    "PixelPaddingValue",
]


class DicomError(ValueError):
    """A file that cannot be read as a single-frame greyscale CT slice; the message says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class SliceMeta:
    """Header facts of one slice. Lengths in mm; ``z`` is the position along the slice normal."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    modality: str
    z: float
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    rows: int
    columns: int
    window_center: float | None
    window_width: float | None
    rescale_intercept: float
    rescale_slope: float
    bits_stored: int | None
    pixel_representation: int | None
    photometric: str
    instance_number: int | None
    fixes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Slice:
    """One CT slice: ``hu`` float32 H x W in Hounsfield units, ``stored`` the raw stored values."""

    hu: np.ndarray
    stored: np.ndarray
    meta: SliceMeta


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's per-file warnings (and log lines) about invalid values.

    RSNA's ``ID_...`` identifiers are not valid UIDs; pydicom would warn and log three lines for
    every file. The validation mode is process-global in pydicom, so it is set for the duration
    and restored after.
    """
    settings = pydicom.config.settings
    before = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = before


def source_name(source: Source) -> str:
    """A human-readable name for a source, for error messages."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    return str(getattr(source, "name", None) or "<stream>")


def _as_readable(source: Source) -> str | IO[bytes]:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source))
    return source


def _dcmread(source: Source, *, header_only: bool) -> pydicom.Dataset:
    name = source_name(source)
    if isinstance(source, str | os.PathLike) and not Path(source).is_file():
        raise DicomError(name, "file not found")
    readable = _as_readable(source)
    kwargs: dict[str, Any] = {}
    if header_only:
        kwargs = {"stop_before_pixels": True, "specific_tags": META_TAGS}
    start = readable.tell() if hasattr(readable, "tell") else None
    try:
        try:
            ds = pydicom.dcmread(readable, **kwargs)
        except InvalidDicomError:
            # Some writers omit the 128-byte preamble; accept such files only if they parse into
            # something that looks like an image header.
            if start is not None and not isinstance(readable, str):
                readable.seek(start)
            ds = pydicom.dcmread(readable, force=True, **kwargs)
            if "SOPInstanceUID" not in ds and "Rows" not in ds and "PixelData" not in ds:
                raise DicomError(
                    name, "not a DICOM file (no DICM preamble, no image header)"
                ) from None
    except DicomError:
        raise
    except (zlib.error, zipfile.BadZipFile) as exc:  # damaged bytes in a zip member
        raise DicomError(name, f"unreadable zip member ({exc})") from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise DicomError(name, f"truncated or corrupt DICOM ({type(exc).__name__}: {exc})") from exc
    return ds


def _floats(value: Any) -> list[float]:
    """Numbers from a DS/IS value, a MultiValue, or odd strings like '00036' or '40\\80'."""
    if value is None:
        return []
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore")
    if isinstance(value, str):
        parts: Sequence[Any] = [p for p in value.replace("\\", " ").split() if p]
    elif isinstance(value, Sequence):
        parts = value
    else:
        parts = [value]
    out: list[float] = []
    for part in parts:
        try:
            number = float(part)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out.append(number)
    return out


def _first(value: Any) -> float | None:
    numbers = _floats(value)
    return numbers[0] if numbers else None


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _int_or_none(ds: pydicom.Dataset, keyword: str) -> int | None:
    number = _first(ds.get(keyword))
    return None if number is None else int(number)


def slice_z(position: Sequence[float] | None, orientation: Sequence[float] | None) -> float:
    """Position along the slice normal (mm): (row x col) . ImagePositionPatient; NaN if unknown."""
    if position is None or orientation is None or len(position) != 3 or len(orientation) != 6:
        return math.nan
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    return float(np.dot(normal, np.asarray(position, float)))


def _rsna_12bit_bug(ds: pydicom.Dataset) -> bool:
    intercept = _first(ds.get("RescaleIntercept"))
    return (
        _int_or_none(ds, "BitsStored") == 12
        and _int_or_none(ds, "PixelRepresentation") == 0
        and intercept is not None
        and intercept > -100
    )


def _meta(ds: pydicom.Dataset, fixes: tuple[str, ...] = ()) -> SliceMeta:
    position = _floats(ds.get("ImagePositionPatient"))
    orientation = _floats(ds.get("ImageOrientationPatient"))
    spacing = _floats(ds.get("PixelSpacing"))
    pos = tuple(position) if len(position) == 3 else None
    ori = tuple(orientation) if len(orientation) == 6 else None
    z = slice_z(pos, ori)
    if math.isnan(z):  # older files without geometry: SliceLocation is the next best thing
        z = _first(ds.get("SliceLocation")) or math.nan
    intercept = _first(ds.get("RescaleIntercept"))
    slope = _first(ds.get("RescaleSlope"))
    return SliceMeta(
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        modality=_text(ds, "Modality"),
        z=z,
        position=pos,  # type: ignore[arg-type]
        orientation=ori,
        pixel_spacing=(spacing[0], spacing[1]) if len(spacing) >= 2 else None,
        slice_thickness=_first(ds.get("SliceThickness")),
        rows=_int_or_none(ds, "Rows") or 0,
        columns=_int_or_none(ds, "Columns") or 0,
        window_center=_first(ds.get("WindowCenter")),
        window_width=_first(ds.get("WindowWidth")),
        rescale_intercept=0.0 if intercept is None else intercept,
        rescale_slope=slope or 1.0,
        bits_stored=_int_or_none(ds, "BitsStored"),
        pixel_representation=_int_or_none(ds, "PixelRepresentation"),
        photometric=_text(ds, "PhotometricInterpretation"),
        instance_number=_int_or_none(ds, "InstanceNumber"),
        fixes=fixes,
    )


def _check_image(ds: pydicom.Dataset, name: str, require_ct: bool, header_only: bool) -> None:
    modality = _text(ds, "Modality")
    if require_ct and modality and modality.upper() != "CT":
        raise DicomError(name, f"modality is {modality}, not CT")
    samples = _int_or_none(ds, "SamplesPerPixel") or 1
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if samples != 1 or (photometric and not photometric.startswith("MONOCHROME")):
        raise DicomError(
            name, f"colour image ({photometric or '?'}, {samples} samples/pixel); CT is greyscale"
        )
    if "Rows" not in ds or "Columns" not in ds:
        raise DicomError(name, "truncated or incomplete header (no Rows/Columns)")
    frames = _int_or_none(ds, "NumberOfFrames") or 1
    if frames > 1:
        raise DicomError(name, f"multi-frame image ({frames} frames); one slice per file expected")
    if not header_only and "PixelData" not in ds:
        kind = "float pixel data" if "FloatPixelData" in ds else "no pixel data"
        raise DicomError(name, f"{kind} (not an image slice)")


def read_meta(source: Source, *, require_ct: bool = True) -> SliceMeta:
    """Header-only read (no pixel decode) of one slice. Raises DicomError on bad input."""
    name = source_name(source)
    with quiet_pydicom():
        ds = _dcmread(source, header_only=True)
        _check_image(ds, name, require_ct, header_only=True)
        fixes = (FIX_RSNA_12BIT,) if _rsna_12bit_bug(ds) else ()
        return _meta(ds, fixes)


def stored_to_hu(
    stored: np.ndarray,
    *,
    slope: float,
    intercept: float,
    bits_stored: int | None,
    pixel_representation: int | None,
    monochrome1: bool = False,
    padding_value: float | None = None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Stored values -> float32 HU, applying the fixes described in the module docstring.

    Returns the HU array and the names of the fixes that were applied.
    """
    fixes: list[str] = []
    padding = stored == int(padding_value) if padding_value is not None else None
    values = stored
    if monochrome1:
        bits = bits_stored or 16
        values = values.astype(np.int32)
        values = -1 - values if pixel_representation == 1 else (1 << bits) - 1 - values
        fixes.append(FIX_MONOCHROME1)
    if bits_stored == 12 and pixel_representation == 0 and intercept > -100:
        values = values.astype(np.int32) + 1000
        values[values >= 4096] -= 4096
        intercept = -1000.0
        fixes.append(FIX_RSNA_12BIT)
    hu = values.astype(np.float32)  # exact: stored values have at most 16 bits
    if slope != 1.0:
        hu *= np.float32(slope)
    hu += np.float32(intercept)
    below = hu < PADDING_BELOW_HU
    padding = below if padding is None else padding | below
    if padding.any():
        hu[padding] = AIR_HU
        fixes.append(FIX_PADDING)
    return hu, tuple(fixes)


def read_slice(source: Source, *, require_ct: bool = True) -> Slice:
    """Read one slice and convert it to Hounsfield units (float32, H x W).

    ``require_ct=False`` accepts other greyscale modalities (their values are then rescaled
    stored values, not HU). Raises DicomError naming the source and the reason on bad input.
    """
    name = source_name(source)
    with quiet_pydicom():
        ds = _dcmread(source, header_only=False)
        _check_image(ds, name, require_ct, header_only=False)
        try:
            stored = np.asarray(ds.pixel_array)
        except Exception as exc:  # decoders raise many types; all mean the same to a user
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            lowered = reason.lower()
            if "less than expected" in lowered or "length" in lowered or isinstance(exc, EOFError):
                reason = f"truncated pixel data ({reason})"
            raise DicomError(name, f"cannot decode pixel data: {reason}") from exc
        if stored.ndim != 2:
            raise DicomError(name, f"pixel array has shape {stored.shape}; expected rows x columns")
        meta = _meta(ds)
        padding_value = _first(ds.get("PixelPaddingValue"))
    hu, fixes = stored_to_hu(
        stored,
        slope=meta.rescale_slope,
        intercept=meta.rescale_intercept,
        bits_stored=meta.bits_stored,
        pixel_representation=meta.pixel_representation,
        monochrome1=meta.photometric.upper() == "MONOCHROME1",
        padding_value=padding_value,
    )
    return Slice(hu=hu, stored=stored, meta=replace(meta, fixes=fixes))
