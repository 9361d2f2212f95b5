"""``ichdet import-nifti``: CT volumes shipped as NIfTI (INSTANCE 2022, BHSD, PhysioNet CT-ICH)
and their label maps -> DICOM series and per-slice masks that every other command reads.

Each volume becomes one CT series: a slice per k, its pixels the volume's HU (rounded, stored
with intercept -1024), its ImagePositionPatient/ImageOrientationPatient/PixelSpacing from the
affine (RAS -> LPS), PatientID and a study/series UID derived from the file name (the same on
every run). The label map of the same name (``--labels DIR``; values -> subtypes as
``ichdet index --mask-labels`` reads them) is sampled on each slice by the same geometry and
written as ``OUT/masks/<SOP Instance UID>.npz``: then ``ichdet index OUT --masks OUT/masks``.
A file that cannot be converted is reported and skipped; a series is written whole or not at all.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from ichdet.data.mask_geometry import SliceGeometry, sample_plane
from ichdet.data.mask_join import NIFTI_SUFFIXES, label_planes, read_label_volume, read_voxels
from ichdet.data.masks import write_mask
from ichdet.dicom.write import ct_dataset, save_dataset

LPS = np.diag([-1.0, -1.0, 1.0])
MAX_VOXELS = 2**30


def nifti_stem(path: Path) -> str:
    return next((path.name[: -len(s)] for s in NIFTI_SUFFIXES if path.name.endswith(s)), "")


def _load_ct(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(HU volume [i, j, k] float32, affine) of a CT NIfTI."""
    import nibabel as nib

    try:
        image: Any = nib.load(os.fspath(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds on bad files
        raise ValueError(f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    shape = tuple(int(s) for s in image.shape)
    if len(shape) != 3 or int(np.prod(shape)) > MAX_VOXELS:
        raise ValueError(f"a CT volume is 3D with at most {MAX_VOXELS} voxels; this one {shape}")
    return read_voxels(image, shape).astype(np.float32), np.asarray(image.affine, float)


def slice_geometries(affine: np.ndarray, shape: tuple[int, int, int]) -> list[SliceGeometry]:
    """The DICOM geometry of each k-slice of a volume (pixel row = j, column = i)."""
    m = LPS @ affine[:3, :3]
    column_step, row_step = m[:, 0], m[:, 1]
    spacing = (float(np.linalg.norm(row_step)), float(np.linalg.norm(column_step)))
    x, y = column_step / spacing[1], row_step / spacing[0]
    if abs(float(x @ y)) > 1e-3:
        raise ValueError("the volume's rows and columns are not perpendicular (sheared in-plane)")
    origin = LPS @ affine[:3, 3]
    orientation = (*x.tolist(), *y.tolist())
    return [
        SliceGeometry(
            tuple((origin + k * m[:, 2]).tolist()),
            orientation,
            spacing,
            (shape[1], shape[0]),
        )
        for k in range(shape[2])
    ]


def _uid(*parts: str) -> str:
    return str(generate_uid(entropy_srcs=["ichdet import-nifti", *parts]))


def convert_volume(
    path: Path, labels_path: Path | None, label_map: dict[int, str], out: Path
) -> int:
    """Write one volume's series (and masks); returns the slices written."""
    hu, affine = _load_ct(path)
    geometries = slice_geometries(affine, hu.shape)
    stem = nifti_stem(path)
    labels = read_label_volume(labels_path, label_map) if labels_path else None
    study, series = _uid(stem, "study"), _uid(stem, "series")
    folder = out / "dicom" / stem
    staging = out / ".partial" / stem  # beside dicom/, so an index never reads half a series
    shutil.rmtree(staging, ignore_errors=True)
    masks: list[tuple[str, np.ndarray]] = []
    for k, geometry in enumerate(geometries):
        sop = _uid(stem, str(k))
        stored = np.clip(np.rint(hu[:, :, k].T) + 1024, -32768, 32767).astype(np.int16)
        ds = ct_dataset(
            stored,
            position=geometry.position,
            orientation=geometry.orientation,
            pixel_spacing=geometry.spacing,
            slice_thickness=float(np.linalg.norm(affine[:3, 2])),
            sop_instance_uid=sop,
            study_instance_uid=study,
            series_instance_uid=series,
            patient_id=stem,
            instance_number=k + 1,
        )
        ds.FrameOfReferenceUID = _uid(stem, "frame")
        save_dataset(ds, staging / f"{k:04d}.dcm")
        if labels is not None:
            masks.append((sop, label_planes(sample_plane(*labels, geometry), label_map)))
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging.replace(folder)
    for sop, mask in masks:
        if mask.any():
            write_mask(out / "masks" / f"{sop}.npz", mask)
    return len(geometries)


def import_nifti(
    images: str | os.PathLike,
    out: str | os.PathLike,
    labels: str | os.PathLike | None,
    label_map: dict[int, str],
    progress: Callable[[int], None] | None = None,
) -> tuple[int, int, list[tuple[str, str]]]:
    """Convert every CT NIfTI in ``images`` (label maps of the same name in ``labels``); returns
    (volumes, slices written, failures as (file, reason))."""
    images, out = Path(images), Path(out)
    found = sorted(p for p in images.iterdir() if p.is_file() and nifti_stem(p))
    if not found:
        raise FileNotFoundError(f"{images}: no .nii/.nii.gz files")
    label_files = (
        {nifti_stem(p): p for p in Path(labels).iterdir() if nifti_stem(p)} if labels else {}
    )
    volumes, slices, failed = 0, 0, []
    for path in found:
        match = label_files.get(nifti_stem(path))
        try:
            if labels and match is None:
                raise ValueError("no label map of the same name")
            slices += convert_volume(path, match, label_map, out)
            volumes += 1
        except (ValueError, OSError) as exc:
            failed.append((os.fspath(path), str(exc)))
        if progress:
            progress(1)
    return volumes, slices, failed
