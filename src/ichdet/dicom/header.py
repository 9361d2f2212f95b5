"""The header facts ichdet uses: parsing DS/IS values that real files get wrong, the slice's
position along its normal, and :class:`SliceMeta`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pydicom

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
    "Manufacturer",
    # what series selection reads (ichdet.selection): what kind of series a slice belongs to
    "SOPClassUID",
    "ImageType",
    "ConvolutionKernel",
    "ContrastBolusAgent",
    "ContrastBolusRoute",
    "ContrastBolusVolume",
    "BodyPartExamined",
    "SeriesDescription",
    "SeriesNumber",
]

#: The Manufacturer that ``ichdet synth`` writes: how a run knows it trained on phantoms.
SYNTHETIC_MANUFACTURER = "ichdet synthetic phantom"


@dataclass(frozen=True)
class SeriesFacts:
    """What a slice's header says about its series (read by ``ichdet.selection``): free text
    from the scanner, kept short and never used as a path."""

    sop_class_uid: str = ""
    image_type: str = ""  #: the values joined by "\\", upper case (ORIGINAL\\PRIMARY\\AXIAL)
    kernel: str = ""  #: ConvolutionKernel (all values joined by "\\")
    contrast: str = ""  #: ContrastBolusAgent / Route / Volume, joined ("" when none given)
    body_part: str = ""
    description: str = ""  #: SeriesDescription
    series_number: int | None = None


def _joined(ds: pydicom.Dataset, keyword: str, limit: int = 64) -> str:
    """A (multi-valued) text element as one string, values joined by a backslash."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    parts = [str(v).strip() for v in values]
    return "\\".join(p for p in parts if p)[:limit]


def series_facts(ds: pydicom.Dataset) -> SeriesFacts:
    """The series facts of a header (RSNA files leave SOPClassUID out: the file meta has it)."""
    sop_class = text(ds, "SOPClassUID")
    if not sop_class and getattr(ds, "file_meta", None) is not None:
        sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    contrast = [_joined(ds, k) for k in ("ContrastBolusAgent", "ContrastBolusRoute")]
    volume = first_number(ds.get("ContrastBolusVolume"))
    if volume:
        contrast.append(f"{volume:g} ml")
    return SeriesFacts(
        sop_class_uid=sop_class[:64],
        image_type=_joined(ds, "ImageType").upper(),
        kernel=_joined(ds, "ConvolutionKernel"),
        contrast=" ".join(c for c in contrast if c),
        body_part=_joined(ds, "BodyPartExamined").upper(),
        description=_joined(ds, "SeriesDescription"),
        series_number=int_or_none(ds, "SeriesNumber"),
    )


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
    manufacturer: str = ""
    series: SeriesFacts = field(default_factory=lambda: SeriesFacts())
    accession: str = ""
    study_date: str = ""

    @property
    def synthetic(self) -> bool:
        """Written by ``ichdet synth`` (a phantom, not a patient)."""
        return self.manufacturer == SYNTHETIC_MANUFACTURER

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def numbers(value: Any) -> list[float]:
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


def first_number(value: Any) -> float | None:
    found = numbers(value)
    return found[0] if found else None


def text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def int_or_none(ds: pydicom.Dataset, keyword: str) -> int | None:
    number = first_number(ds.get(keyword))
    return None if number is None else int(number)


def slice_z(position: Sequence[float] | None, orientation: Sequence[float] | None) -> float:
    """Position along the slice normal (mm): (row x col) . ImagePositionPatient; NaN if unknown."""
    if position is None or orientation is None or len(position) != 3 or len(orientation) != 6:
        return math.nan
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    return float(np.dot(normal, np.asarray(position, float)))


def slice_meta(ds: pydicom.Dataset, fixes: tuple[str, ...] = ()) -> SliceMeta:
    position = numbers(ds.get("ImagePositionPatient"))
    orientation = numbers(ds.get("ImageOrientationPatient"))
    spacing = numbers(ds.get("PixelSpacing"))
    pos = tuple(position) if len(position) == 3 else None
    ori = tuple(orientation) if len(orientation) == 6 else None
    z = slice_z(pos, ori)
    if math.isnan(z):  # older files without geometry: SliceLocation is the next best thing
        location = first_number(ds.get("SliceLocation"))
        z = math.nan if location is None else location  # 0.0 is a position, not "missing"
    intercept = first_number(ds.get("RescaleIntercept"))
    slope = first_number(ds.get("RescaleSlope"))
    return SliceMeta(
        sop_instance_uid=text(ds, "SOPInstanceUID"),
        study_instance_uid=text(ds, "StudyInstanceUID"),
        series_instance_uid=text(ds, "SeriesInstanceUID"),
        patient_id=text(ds, "PatientID"),
        modality=text(ds, "Modality"),
        z=z,
        position=pos,  # type: ignore[arg-type]
        orientation=ori,
        pixel_spacing=(spacing[0], spacing[1]) if len(spacing) >= 2 else None,
        slice_thickness=first_number(ds.get("SliceThickness")),
        rows=int_or_none(ds, "Rows") or 0,
        columns=int_or_none(ds, "Columns") or 0,
        window_center=first_number(ds.get("WindowCenter")),
        window_width=first_number(ds.get("WindowWidth")),
        rescale_intercept=0.0 if intercept is None else intercept,
        rescale_slope=slope or 1.0,
        bits_stored=int_or_none(ds, "BitsStored"),
        pixel_representation=int_or_none(ds, "PixelRepresentation"),
        photometric=text(ds, "PhotometricInterpretation"),
        instance_number=int_or_none(ds, "InstanceNumber"),
        fixes=fixes,
        manufacturer=text(ds, "Manufacturer"),
        series=series_facts(ds),
        accession=text(ds, "AccessionNumber"),
        study_date=text(ds, "StudyDate"),
    )
