"""How much blood: volume in mL from a stack of masks, and the thickness of a collection in mm.

Volumes sum each slice's area times the slice's own share of the series along z, taken from the
slice positions (half the distance to each neighbour), never from SliceThickness: a thin series,
a slab series and a series with a gap all give the volume the positions imply. A mask of a
single slice has no neighbours; its ``thickness`` is the fallback then.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ichdet.labels import SUBTYPES

#: Subtypes that are collections along the skull, whose maximal thickness is reported.
COLLECTIONS: tuple[str, ...] = ("subdural", "epidural")


def slice_extent_mm(z: Sequence[float] | np.ndarray, thickness: float | None = None) -> np.ndarray:
    """Each slice's extent along z (mm): half the gap to each neighbour, the end slices their
    one gap. ``z`` may come in any order; the result is in the order given."""
    z = np.asarray(z, dtype=np.float64)
    if z.size == 0:
        return z
    if z.size == 1:
        if thickness is None or not thickness > 0:
            raise ValueError("one slice: its volume needs the slice thickness")
        return np.array([float(thickness)])
    order = np.argsort(z, kind="stable")
    gaps = np.diff(z[order])
    if (gaps <= 1e-6).any():
        raise ValueError("two slices share one position: not one series")
    extent = np.empty_like(z)
    extent[order] = np.concatenate([[gaps[0]], (gaps[:-1] + gaps[1:]) / 2, [gaps[-1]]])
    return extent


def volume_ml(
    mask: np.ndarray,
    z: Sequence[float] | np.ndarray,
    pixel_spacing: tuple[float, float],
    thickness: float | None = None,
) -> float:
    """Volume (mL) of a boolean mask N x H x W (slice k at position ``z[k]``) with
    ``pixel_spacing`` (row, column) in mm."""
    if mask.ndim != 3 or mask.shape[0] != len(z):
        raise ValueError(f"mask {mask.shape} does not match {len(z)} slice positions")
    if not mask.any():
        return 0.0
    areas = mask.reshape(len(mask), -1).sum(axis=1) * float(pixel_spacing[0] * pixel_spacing[1])
    return float((areas * slice_extent_mm(z, thickness)).sum() / 1000.0)


def max_thickness_mm(mask: np.ndarray, pixel_spacing: tuple[float, float]) -> float:
    """The thickest point of a collection (mm), measured in the axial plane as a reader does:
    the diameter of the largest disc that fits in the mask on any slice (twice the largest
    distance to the mask's edge, less one pixel: exact to within one pixel)."""
    if not mask.any():
        return 0.0
    spacing = (float(pixel_spacing[0]), float(pixel_spacing[1]))
    best = 0.0
    for plane in mask:
        if plane.any():
            padded = np.pad(plane, 1)  # the image's border is the mask's edge too
            best = max(best, float(ndimage.distance_transform_edt(padded, sampling=spacing).max()))
    return max(2 * best - min(spacing), min(spacing))


def study_measures(
    masks: np.ndarray,
    z: Sequence[float] | np.ndarray,
    pixel_spacing: tuple[float, float],
    thickness: float | None = None,
) -> dict[str, float]:
    """``volume_ml_<subtype>``, ``volume_ml_any`` (the union) and ``thickness_mm_<collection>``
    of masks N x 5 x H x W (SUBTYPES order)."""
    if masks.ndim != 4 or masks.shape[1] != len(SUBTYPES):
        raise ValueError(f"expected N x {len(SUBTYPES)} x H x W masks, got {masks.shape}")
    out = {
        f"volume_ml_{name}": round(volume_ml(masks[:, k], z, pixel_spacing, thickness), 3)
        for k, name in enumerate(SUBTYPES)
    }
    out["volume_ml_any"] = round(
        volume_ml(np.asarray(masks.any(axis=1)), z, pixel_spacing, thickness), 3
    )
    for name in COLLECTIONS:
        k = SUBTYPES.index(name)
        out[f"thickness_mm_{name}"] = round(max_thickness_mm(masks[:, k], pixel_spacing), 2)
    return out


def measure_columns() -> list[str]:
    """The columns ``study_measures`` gives, in order."""
    return [
        *(f"volume_ml_{n}" for n in (*SUBTYPES, "any")),
        *(f"thickness_mm_{n}" for n in COLLECTIONS),
    ]
