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
import os
import stat
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import IO, Any

import numpy as np
import pydicom
import pydicom.config
from pydicom.errors import InvalidDicomError

from ichdet.dicom.header import (
    META_TAGS,
    SliceMeta,
    first_number,
    int_or_none,
    series_facts,
    slice_meta,
    text,
)
from ichdet.dicom.sources import regular_file_problem
from ichdet.util.limits import limits

Source = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes]

#: HU given to padded pixels outside the scanner's field of view.
AIR_HU = -1024.0
#: Stored values that rescale below this are padding, not tissue (air is -1000 HU).
PADDING_BELOW_HU = -1100.0

FIX_RSNA_12BIT = "rsna_12bit_intercept"
FIX_PADDING = "padding_to_air"
FIX_MONOCHROME1 = "monochrome1_inverted"


class DicomError(ValueError):
    """A file that cannot be read as a single-frame greyscale CT slice; the message says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


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


def _check_path(path: str, name: str) -> None:
    """One stat: the file exists, is a regular file (no FIFO or device), and is under the cap."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DicomError(name, "file not found") from None
    except OSError as exc:
        raise DicomError(name, f"cannot stat ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise DicomError(name, regular_file_problem(path) or "not a regular file")
    cap = limits().max_file_bytes
    if info.st_size > cap:
        raise DicomError(name, f"file of {info.st_size} bytes is over the {cap}-byte cap")


def _dcmread(source: Source, *, header_only: bool) -> pydicom.Dataset:
    name = source_name(source)
    if isinstance(source, str | os.PathLike):
        _check_path(os.fspath(source), name)
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


def _rsna_12bit_bug(ds: pydicom.Dataset) -> bool:
    intercept = first_number(ds.get("RescaleIntercept"))
    return (
        int_or_none(ds, "BitsStored") == 12
        and int_or_none(ds, "PixelRepresentation") == 0
        and intercept is not None
        and intercept > -100
    )


def _check_image(ds: pydicom.Dataset, name: str, require_ct: bool, header_only: bool) -> None:
    modality = text(ds, "Modality")
    if require_ct and modality and modality.upper() != "CT":
        raise DicomError(name, f"modality is {modality}, not CT")
    samples = int_or_none(ds, "SamplesPerPixel") or 1
    photometric = text(ds, "PhotometricInterpretation").upper()
    if samples != 1 or (photometric and not photometric.startswith("MONOCHROME")):
        raise DicomError(
            name, f"colour image ({photometric or '?'}, {samples} samples/pixel); CT is greyscale"
        )
    if "Rows" not in ds or "Columns" not in ds:
        raise DicomError(name, "truncated or incomplete header (no Rows/Columns)")
    frames = int_or_none(ds, "NumberOfFrames") or 1
    if frames > 1:
        raise DicomError(name, f"multi-frame image ({frames} frames); one slice per file expected")
    if not header_only and "PixelData" not in ds:
        kind = "float pixel data" if "FloatPixelData" in ds else "no pixel data"
        raise DicomError(name, f"{kind} (not an image slice)")
    _check_size(ds, name)
    if require_ct and ds.get("RescaleIntercept") is None:
        raise DicomError(name, "CT slice without RescaleIntercept (HU cannot be known)")


def _check_size(ds: pydicom.Dataset, name: str) -> None:
    """Refuse, before any decoding, a slice whose pixels would cost more than the caps."""
    rows, columns = int_or_none(ds, "Rows") or 0, int_or_none(ds, "Columns") or 0
    if rows <= 0 or columns <= 0:
        raise DicomError(name, f"image of {rows} x {columns} pixels")
    cap = limits().max_pixels
    if rows * columns > cap:
        raise DicomError(
            name,
            f"slice of {rows} x {columns} pixels is over the {cap}-pixel cap "
            "(ICHDET_MAX_PIXELS raises it)",
        )
    bits = int_or_none(ds, "BitsAllocated") or 16
    if bits not in (8, 16, 32):
        raise DicomError(name, f"unsupported BitsAllocated {bits}")
    stored = int_or_none(ds, "BitsStored") or bits
    if not 1 <= stored <= bits:
        raise DicomError(name, f"BitsStored {stored} does not fit BitsAllocated {bits}")


@contextlib.contextmanager
def _reading(name: str) -> Iterator[None]:
    """Quiet pydicom, and turn whatever else a hostile header makes pydicom or numpy raise
    into a DicomError naming the file: callers see one exception type for bad input."""
    with quiet_pydicom():
        try:
            yield
        except DicomError:
            raise
        except Exception as exc:  # noqa: BLE001 - the fuzz test feeds every kind of damage
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            raise DicomError(name, f"unreadable ({type(exc).__name__}: {reason})") from exc


def read_meta(source: Source, *, require_ct: bool = True) -> SliceMeta:
    """Header-only read (no pixel decode) of one slice. Raises DicomError on bad input."""
    name = source_name(source)
    with _reading(name):
        ds = _dcmread(source, header_only=True)
        _check_image(ds, name, require_ct, header_only=True)
        fixes = (FIX_RSNA_12BIT,) if _rsna_12bit_bug(ds) else ()
        return slice_meta(ds, fixes)


def read_identity(source: Source) -> dict[str, Any]:
    """Who and what any DICOM object is, image or not (a dose report, a capture): study,
    series, patient, modality, SOP class, series description and number. Header only."""
    name = source_name(source)
    with _reading(name):
        ds = _dcmread(source, header_only=True)
        facts = series_facts(ds)
        return {
            "study_id": text(ds, "StudyInstanceUID")[:64],
            "series_id": text(ds, "SeriesInstanceUID")[:64],
            "patient_id": text(ds, "PatientID")[:64],
            "modality": text(ds, "Modality")[:16],
            "sop_class_uid": facts.sop_class_uid,
            "description": facts.description,
            "series_number": facts.series_number,
        }


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
        values = values.astype(np.int64)  # 32-bit stored values overflow int32 here
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


def _pixels(ds: pydicom.Dataset, name: str) -> np.ndarray:
    """The stored values (rows x columns), decoded; DicomError when they cannot be."""
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
    return stored


def _hu(ds: pydicom.Dataset, stored: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """HU from the few header elements the conversion needs (not the whole SliceMeta)."""
    intercept = first_number(ds.get("RescaleIntercept"))
    return stored_to_hu(
        stored,
        slope=first_number(ds.get("RescaleSlope")) or 1.0,
        intercept=0.0 if intercept is None else intercept,
        bits_stored=int_or_none(ds, "BitsStored"),
        pixel_representation=int_or_none(ds, "PixelRepresentation"),
        monochrome1=text(ds, "PhotometricInterpretation").upper() == "MONOCHROME1",
        padding_value=first_number(ds.get("PixelPaddingValue")),
    )


def read_hu(source: Source, *, require_ct: bool = True) -> np.ndarray:
    """Only the HU image of :func:`read_slice` (float32, H x W): the fast path of ``prepare``
    and ``predict``, which need no header summary. Same checks, same errors, same values."""
    name = source_name(source)
    with _reading(name):
        ds = _dcmread(source, header_only=False)
        _check_image(ds, name, require_ct, header_only=False)
        return _hu(ds, _pixels(ds, name))[0]


def read_slice(source: Source, *, require_ct: bool = True) -> Slice:
    """Read one slice and convert it to Hounsfield units (float32, H x W).

    ``require_ct=False`` accepts other greyscale modalities (their values are then rescaled
    stored values, not HU). Raises DicomError naming the source and the reason on bad input.
    """
    name = source_name(source)
    with _reading(name):
        ds = _dcmread(source, header_only=False)
        _check_image(ds, name, require_ct, header_only=False)
        stored = _pixels(ds, name)
        meta = slice_meta(ds)
        hu, fixes = _hu(ds, stored)
    return Slice(hu=hu, stored=stored, meta=replace(meta, fixes=fixes))
