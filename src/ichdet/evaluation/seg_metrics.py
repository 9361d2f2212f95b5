"""The figures segmentation papers report: Dice and the 95th-percentile Hausdorff distance per
subtype (as the INSTANCE 2022 challenge scores them), and volume agreement between a method and
the truth (Lin's concordance correlation, Bland-Altman bias and 95 % limits of agreement, mL).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """2|A n B| / (|A| + |B|); NaN when both are empty (nothing to score)."""
    total = int(pred.sum()) + int(true.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(pred, true).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, true: np.ndarray, spacing: Sequence[float]) -> float:
    """The 95th percentile of the symmetric surface distances (mm) between two boolean
    volumes with voxel ``spacing`` (one value per axis). NaN when both are empty; infinite
    when only one is (no finite distance exists)."""
    pred, true = pred.astype(bool), true.astype(bool)
    if not pred.any() and not true.any():
        return float("nan")
    if not pred.any() or not true.any():
        return float("inf")
    sampling = tuple(float(s) for s in spacing)
    pred_surface, true_surface = _surface(pred), _surface(true)
    to_true = ndimage.distance_transform_edt(~true_surface, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)
    distances = np.concatenate([to_true[pred_surface], to_pred[true_surface]])
    return float(np.percentile(distances, 95))


def concordance(x: ArrayLike, y: ArrayLike) -> float:
    """Lin's concordance correlation coefficient of two measurements of the same things."""
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(a) != len(b) or len(a) < 2:
        return float("nan")
    covariance = np.mean((a - a.mean()) * (b - b.mean()))
    denominator = a.var() + b.var() + (a.mean() - b.mean()) ** 2
    return float(2 * covariance / denominator) if denominator > 0 else float("nan")


def bland_altman(pred: ArrayLike, true: ArrayLike) -> dict[str, float]:
    """Bias (mean of pred - true) and the 95 % limits of agreement (bias +- 1.96 SD)."""
    diff = np.asarray(pred, np.float64) - np.asarray(true, np.float64)
    if diff.size == 0:
        nan = float("nan")
        return {"bias": nan, "lower": nan, "upper": nan}
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    bias = float(diff.mean())
    return {"bias": bias, "lower": bias - 1.96 * sd, "upper": bias + 1.96 * sd}


def volume_agreement(pred: ArrayLike, true: ArrayLike) -> dict[str, float]:
    """CCC, Bland-Altman (mL) and the mean absolute error of paired volumes."""
    a, b = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    return {
        "ccc": concordance(a, b),
        **bland_altman(a, b),
        "mae_ml": float(np.abs(a - b).mean()) if a.size else float("nan"),
        "n": int(a.size),
    }
