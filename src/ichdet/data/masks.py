"""Hemorrhage masks per slice: the files, and the index columns that point at them.

A slice's mask is an ``.npz`` of boolean H x W arrays named by subtype (a subtype that is absent
is empty), in the slice's own pixel grid: what ``ichdet synth --masks`` writes and what
``ichdet index --masks`` writes for masks it joined from NIfTI or DICOM SEG files.

Index columns: ``mask_known`` (the slice's mask is known: ``mask`` names its file, or "" for a
slice known to hold no blood) and ``mask``. Slices of series with no mask stay unknown and take
no part in segmentation training or scoring.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ichdet.labels import SUBTYPES
from ichdet.util.atomic import atomic_path
from ichdet.util.names import path_component

#: Largest mask file read (a 1024 x 1024 slice of five subtypes packs into far less).
MAX_MASK_BYTES = 64 * 2**20


def read_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A slice's mask file -> bool array 5 x H x W (SUBTYPES order); ``shape`` checks H x W."""
    path = Path(path)
    if path.stat().st_size > MAX_MASK_BYTES:
        raise ValueError(f"{path}: mask file larger than {MAX_MASK_BYTES // 2**20} MiB")
    try:
        with np.load(path, allow_pickle=False) as data:
            planes = {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: not a readable mask file ({exc})") from exc
    unknown = sorted(set(planes) - set(SUBTYPES))
    if unknown:
        raise ValueError(f"{path}: unknown subtype(s) {', '.join(unknown)}")
    shapes = {p.shape for p in planes.values()} | ({tuple(shape)} if shape else set())
    if len(shapes) > 1 or any(len(s) != 2 for s in shapes):
        raise ValueError(f"{path}: mask planes of shapes {sorted(shapes)}; expected one H x W")
    if not shapes:
        raise ValueError(f"{path}: an empty mask file needs the slice's shape")
    rows, columns = shapes.pop()
    out = np.zeros((len(SUBTYPES), rows, columns), dtype=bool)
    for k, name in enumerate(SUBTYPES):
        if name in planes:
            out[k] = planes[name] != 0
    return out


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Write a 5 x H x W mask (only its non-empty subtypes), atomically."""
    if mask.ndim != 3 or mask.shape[0] != len(SUBTYPES):
        raise ValueError(f"expected a {len(SUBTYPES)} x H x W mask, got {mask.shape}")
    planes = {name: mask[k].astype(bool) for k, name in enumerate(SUBTYPES) if mask[k].any()}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **planes)
    return Path(path)


def slice_mask(known: bool, path: str | None, shape: tuple[int, int]) -> np.ndarray | None:
    """The mask of an index row: None when unknown, empty for a known slice without a file."""
    if not known:
        return None
    if not path:
        return np.zeros((len(SUBTYPES), *shape), dtype=bool)
    return read_mask(path, shape)


def labels_from_masks(mask: np.ndarray, min_pixels: int = 1) -> dict[str, int]:
    """Slice labels a mask implies (a subtype with at least ``min_pixels``; ``any``)."""
    found = {n: int(mask[k].sum() >= min_pixels) for k, n in enumerate(SUBTYPES)}
    return {**found, "any": max(found.values())}


def write_series_masks(
    path: Path,
    image_ids: list[str],
    z: np.ndarray,
    masks: np.ndarray,
    pixel_mm: tuple[float, float],
) -> Path:
    """A series' predicted masks (N x 5 x H x W bool, z order) in one file: ids, z, the size of
    a mask pixel (mm) and the masks packed along the pixel axis."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            image_ids=np.array(image_ids),
            z=np.asarray(z, float),
            masks=np.packbits(masks.astype(bool), axis=-1),
            shape=np.array(masks.shape),
            pixel_mm=np.array(pixel_mm, float),
            subtypes=np.array(SUBTYPES),
        )
    return path


def read_series_masks(
    path: str | os.PathLike,
) -> tuple[list[str], np.ndarray, np.ndarray, tuple[float, float]]:
    """(image ids, z, masks N x 5 x H x W bool, pixel size in mm) of a series mask file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            shape = tuple(int(v) for v in data["shape"])
            masks = np.unpackbits(data["masks"], axis=-1, count=shape[-1]).astype(bool)
            pixel = (float(data["pixel_mm"][0]), float(data["pixel_mm"][1]))
            ids, z = [str(i) for i in data["image_ids"]], np.asarray(data["z"], float)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: not a readable series mask file ({exc})") from exc
    if masks.shape != shape or len(ids) != shape[0] or len(z) != shape[0]:
        raise ValueError(f"{path}: masks of {masks.shape} for {len(ids)} slices")
    return ids, z, masks, pixel


def series_mask_file(folder: Path, series_id: str) -> Path:
    """Where ``predict --segmenter`` keeps a series' masks: ``folder/<series id>.npz`` (an id
    that is not a plain name hashed)."""
    return folder / f"{path_component(str(series_id))}.npz"


def segmented_file(study: Any, folder: Path) -> Path | None:
    """The mask file of the series a studies.csv row was measured on (``segmented_series``),
    or None when the study has none."""
    series = study.get("segmented_series") if hasattr(study, "get") else None
    if series is None or series != series or not str(series):
        return None
    path = series_mask_file(folder, str(series))
    return path if path.is_file() else None


def upscale_masks(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Masks ... x h x w (bool) on a grid of ``shape`` (rows, columns) by nearest neighbour."""
    if masks.shape[-2:] == tuple(shape):
        return masks.astype(bool)
    rows, columns = shape
    planes = masks.reshape(-1, *masks.shape[-2:])
    out = np.zeros((len(planes), rows, columns), dtype=bool)
    for k, plane in enumerate(planes):
        if plane.any():
            out[k] = (
                cv2.resize(plane.astype(np.uint8), (columns, rows), interpolation=cv2.INTER_NEAREST)
                > 0
            )
    return out.reshape(*masks.shape[:-2], rows, columns)
