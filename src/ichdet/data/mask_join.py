"""``ichdet index --masks DIR``: masks joined to the indexed slices.

DIR holds one of three layouts (README, "Masks"):

- per-slice ``<image_id>.npz`` files (what ``ichdet synth --masks`` writes): every indexed slice
  is known, a slice without a file holds no blood;
- NIfTI label maps (``.nii``/``.nii.gz``, as INSTANCE, BHSD, CT-ICH and HemSeg-200 ship them)
  named by the SeriesInstanceUID, StudyInstanceUID or PatientID of their series; each value of
  the map is a subtype (``labels``); joined slice by slice by geometry (ichdet.data.mask_geometry);
- DICOM SEG files (highdicom): one segment per subtype, named by its label, joined to the source
  instances its frames reference.

Joined masks are written per slice beside the index (``X.masks/<image_id>.npz``) and the index
gains ``mask_known`` and ``mask`` (ichdet.data.masks). A mask that does not fit its series is
an error naming the file and the reason; its series stays unknown and the others go on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichdet.data.mask_geometry import MaskMismatch, SliceGeometry, sample_plane
from ichdet.data.masks import labels_from_masks, read_mask, write_mask
from ichdet.dicom.read import DicomError, read_meta
from ichdet.dicom.sources import read_source
from ichdet.labels import LABELS, SUBTYPES

#: Default NIfTI label values: 1..5 = the subtypes in ichdet's (alphabetical) order.
DEFAULT_LABELS: dict[int, str] = {k + 1: name for k, name in enumerate(SUBTYPES)}
#: Largest mask volume read (voxels): 1024 x 1024 x 2048.
MAX_VOXELS = 2**31
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def parse_label_map(text: str | None) -> dict[int, str]:
    """``"1=intraparenchymal,2=intraventricular"`` -> {1: ..., 2: ...}; None: DEFAULT_LABELS."""
    if not text:
        return dict(DEFAULT_LABELS)
    out = {}
    for item in text.split(","):
        value, sep, name = item.partition("=")
        if not sep or not value.strip().isdigit() or name.strip() not in SUBTYPES:
            raise ValueError(f"mask label {item!r}: expected VALUE=SUBTYPE ({', '.join(SUBTYPES)})")
        out[int(value)] = name.strip()
    return out


def _nifti_stem(path: Path) -> str:
    return next((path.name[: -len(s)] for s in NIFTI_SUFFIXES if path.name.endswith(s)), "")


def _geometry(source: str) -> SliceGeometry:
    meta = read_meta(read_source(source))
    if meta.position is None or meta.orientation is None or meta.pixel_spacing is None:
        raise MaskMismatch(f"{source}: no ImagePositionPatient/Orientation/PixelSpacing")
    return SliceGeometry(
        meta.position, meta.orientation, meta.pixel_spacing, (meta.rows, meta.columns)
    )


def read_voxels(image: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A loaded NIfTI image's voxels (a truncated or corrupt payload: ValueError)."""
    try:
        return np.asanyarray(image.dataobj).reshape(shape)
    except Exception as exc:  # noqa: BLE001 - gzip, zlib, nibabel and numpy errors alike
        raise ValueError(f"unreadable voxel data ({type(exc).__name__}: {exc})") from exc


def read_label_volume(path: Path, labels: dict[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """(label volume as integers, affine); a label value not in ``labels`` is an error."""
    import nibabel as nib

    try:
        image: Any = nib.load(os.fspath(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds on bad files
        raise ValueError(f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or int(np.prod(shape)) > MAX_VOXELS:
        raise ValueError(f"a label map is one 3D volume of at most {MAX_VOXELS} voxels; {shape}")
    data = read_voxels(image, shape)
    if not np.array_equal(data, np.round(data)):
        raise ValueError("a label map holds whole numbers; this one has fractions")
    volume = data.astype(np.int32)
    unknown = sorted(set(np.unique(volume).tolist()) - {0, *labels})
    if unknown:
        raise ValueError(f"label value(s) {unknown} not in the label map {labels}")
    return volume, np.asarray(image.affine, float)


def label_planes(values: np.ndarray, labels: dict[int, str]) -> np.ndarray:
    """A plane of label values -> 5 x H x W subtype masks."""
    mask = np.zeros((len(SUBTYPES), *values.shape), dtype=bool)
    for value, name in labels.items():
        mask[SUBTYPES.index(name)] |= values == value
    return mask


def _series_for(stem: str, index: pd.DataFrame) -> list[pd.DataFrame]:
    for column in ("series_id", "study_id", "patient_id"):
        rows = index[index[column].astype(str) == stem]
        if len(rows):
            return [group for _, group in rows.groupby("series_id", sort=False)]
    return []


def join_nifti(
    path: Path, index: pd.DataFrame, labels: dict[int, str]
) -> Iterator[tuple[str, np.ndarray]]:
    """(image_id, 5 x H x W mask) of every slice of the series ``path`` names."""
    series = _series_for(_nifti_stem(path), index)
    if not series:
        raise ValueError("named after no series, study or patient of the index")
    volume, affine = read_label_volume(path, labels)
    problems = []
    for group in series:
        try:
            planes = [
                (
                    row.image_id,
                    label_planes(sample_plane(volume, affine, _geometry(row.source)), labels),
                )
                for row in group.itertuples()
            ]
        except (MaskMismatch, DicomError) as exc:
            problems.append(f"series {group['series_id'].iloc[0]}: {exc}")
            continue
        yield from planes
    if len(problems) == len(series):
        raise MaskMismatch("does not fit its series: " + "; ".join(problems))


def _read_seg(path: Path) -> Any:
    try:
        import highdicom as hd
    except ImportError as exc:
        raise ImportError("reading DICOM SEG needs highdicom: pip install 'ichdet[serve]'") from exc
    try:
        return hd.seg.segread(os.fspath(path))
    except Exception as exc:  # noqa: BLE001 - pydicom/highdicom raise many kinds on bad files
        raise ValueError(f"not a readable DICOM SEG ({type(exc).__name__}: {exc})") from exc


def join_seg(path: Path, index: pd.DataFrame) -> Iterator[tuple[str, np.ndarray]]:
    """(image_id, mask) of every indexed slice a DICOM SEG references (by SOP Instance UID)."""
    seg = _read_seg(path)
    numbers = {}
    for item in seg.SegmentSequence:
        name = str(item.SegmentLabel).strip().lower()
        if name in SUBTYPES:
            numbers[int(item.SegmentNumber)] = name
    if not numbers:
        raise ValueError(f"no segment is labelled with a subtype ({', '.join(SUBTYPES)})")
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    rows = index[index["image_id"].astype(str).isin(referenced)]
    if rows.empty:
        raise ValueError("references no indexed slice")
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=rows["image_id"].astype(str).tolist(),
            segment_numbers=list(numbers),
            assert_missing_frames_are_empty=True,
        )
    except Exception as exc:  # noqa: BLE001 - highdicom raises many kinds on odd SEGs
        raise ValueError(f"its frames cannot be read ({type(exc).__name__}: {exc})") from exc
    for k, row in enumerate(rows.itertuples()):
        if pixels.shape[1:3] != (row.rows, row.columns):
            raise MaskMismatch(
                f"frames of {pixels.shape[1:3]} pixels; the slice has {row.rows} x {row.columns}"
            )
        mask = np.zeros((len(SUBTYPES), *pixels.shape[1:3]), dtype=bool)
        for j, number in enumerate(numbers):
            mask[SUBTYPES.index(numbers[number])] |= pixels[k, :, :, j] > 0
        yield row.image_id, mask


def _per_slice(directory: Path, index: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The per-slice layout: every slice known; its file when there is one (shape checked)."""
    files = {p.stem: p for p in directory.glob("*.npz")}
    paths, errors = [], []
    for row in index.itertuples():
        path = files.get(str(row.image_id))
        if path is not None:
            try:
                read_mask(path, (int(row.rows), int(row.columns)))
            except ValueError as exc:
                errors.append((str(path), str(exc)))
                path = None
        paths.append(os.fspath(path) if path is not None else "")
    failed = {Path(source).stem for source, _ in errors}
    known = [str(i) not in failed for i in index["image_id"]]
    return index.assign(mask_known=known, mask=paths), errors


def _volume_files(directory: Path) -> tuple[list[Path], list[Path]]:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    nifti = [p for p in files if p.name.endswith(NIFTI_SUFFIXES)]
    seg = [p for p in files if p.suffix.lower() == ".dcm"]
    return nifti, seg


def attach_masks(
    index: pd.DataFrame,
    directory: str | os.PathLike,
    out: str | os.PathLike,
    labels: dict[int, str],
) -> tuple[pd.DataFrame, list[tuple[str, str]], dict]:
    """``index`` with ``mask_known``/``mask`` from the masks in ``directory``; joined masks are
    written into ``out``. Returns (index, errors as (file, reason), report)."""
    directory, out = Path(directory), Path(out)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such folder of masks")
    if any(directory.glob("*.npz")):
        frame, errors = _per_slice(directory, index)
        return frame, errors, _report(frame, "per-slice", errors)
    nifti, seg = _volume_files(directory)
    if not nifti and not seg:
        raise ValueError(
            f"{directory}: no mask files (.npz per slice, .nii/.nii.gz, DICOM SEG .dcm)"
        )
    found: dict[str, np.ndarray] = {}
    errors = []
    for path in [*nifti, *seg]:
        try:
            joined = join_nifti(path, index, labels) if path in nifti else join_seg(path, index)
            found.update(dict(joined))
        except (ValueError, OSError, ImportError) as exc:
            errors.append((os.fspath(path), str(exc)))
    frame = _with_joined(index, found, out)
    return frame, errors, _report(frame, "NIfTI" if nifti else "DICOM SEG", errors)


def _with_joined(index: pd.DataFrame, found: dict[str, np.ndarray], out: Path) -> pd.DataFrame:
    """Write the joined masks (non-empty ones) and fill the columns; slice labels a mask
    implies fill the labels that are unknown."""
    frame = index.copy()
    frame["mask_known"] = frame["image_id"].astype(str).isin(found)
    paths = []
    for image_id, known in zip(frame["image_id"].astype(str), frame["mask_known"], strict=True):
        mask = found.get(image_id)
        if known and mask is not None and mask.any():
            paths.append(os.fspath(write_mask(out / f"{image_id}.npz", mask)))
        else:
            paths.append("")
    frame["mask"] = paths
    for column in LABELS:
        if column not in frame:
            frame[column] = np.nan
    for row in np.flatnonzero(frame["mask_known"].to_numpy()):
        implied = labels_from_masks(found[str(frame["image_id"].iat[row])])
        for name, value in implied.items():
            if pd.isna(frame[name].iat[row]):
                frame.iloc[row, frame.columns.get_loc(name)] = float(value)
    return frame


def _report(frame: pd.DataFrame, layout: str, errors: list) -> dict:
    known = frame["mask_known"]
    return {
        "layout": layout,
        "slices_known": int(known.sum()),
        "slices_with_blood": int((frame["mask"] != "").sum()),
        "series_known": int(frame.loc[known, "series_id"].nunique()),
        "mask_errors": len(errors),
    }
