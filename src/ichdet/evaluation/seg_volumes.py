"""Scoring a segmenter's validation fold: Dice per subtype and the series volumes against the truth.

Per slice the segmenter's validation pass gives pixel counts at the model's size (``COUNTS``:
predicted, true and overlapping pixels of each subtype and of ``any``, their union). Predicted
volumes come from those counts, each pixel standing for (rows x pixel spacing / size) by
(columns x pixel spacing / size) mm, times the slice's extent along z; true volumes come from
the full-resolution masks (exact).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ichdet.data.masks import slice_mask
from ichdet.evaluation.seg_metrics import volume_agreement
from ichdet.evaluation.volume import slice_extent_mm, study_measures
from ichdet.labels import SUBTYPES

#: The labels counted per slice: the subtypes and their union.
COUNTED: tuple[str, ...] = (*SUBTYPES, "any")
#: Columns of a per-slice count row: predicted, true and overlapping pixels per counted label.
COUNTS: tuple[str, ...] = tuple(f"{kind}_{n}" for kind in ("pred", "true", "both") for n in COUNTED)


def _series_groups(index: pd.DataFrame):
    return index.reset_index(drop=True).groupby("series_id", sort=False)


def true_volumes(index: pd.DataFrame) -> pd.DataFrame:
    """Per series of ``index`` (known masks): the exact measures of its full-resolution masks."""
    rows = []
    for series, group in _series_groups(index):
        shape = (int(group["rows"].iloc[0]), int(group["columns"].iloc[0]))
        masks = np.stack(
            [
                slice_mask(True, str(p or ""), shape)  # type: ignore[misc]
                for p in group["mask"].fillna("")
            ]
        )
        spacing = float(group["pixel_spacing"].iloc[0])
        measures = study_measures(
            masks, group["z"].to_numpy(), (spacing, spacing), _thickness(group)
        )
        rows.append({"series_id": series, "study_id": group["study_id"].iloc[0], **measures})
    return pd.DataFrame(rows).set_index("series_id")


def _thickness(group: pd.DataFrame) -> float | None:
    value = group["thickness"].iloc[0] if "thickness" in group else None
    return float(value) if value is not None and value == value else None


def predicted_volumes(index: pd.DataFrame, counts: np.ndarray, size: int) -> pd.DataFrame:
    """Per series: the volume (mL) of each counted label from the per-slice predicted counts."""
    frame = index.reset_index(drop=True)
    rows = []
    for series, group in _series_groups(frame):
        spacing = float(group["pixel_spacing"].iloc[0])
        pixel = (group["rows"].to_numpy() * spacing / size) * (
            group["columns"].to_numpy() * spacing / size
        )
        extent = slice_extent_mm(group["z"].to_numpy(), _thickness(group))
        predicted = counts[group.index.to_numpy(), : len(COUNTED)]
        volumes = (predicted * (pixel * extent)[:, None]).sum(axis=0) / 1000.0
        rows.append(
            {
                "series_id": series,
                **{f"volume_ml_{n}": v for n, v in zip(COUNTED, volumes, strict=True)},
            }
        )
    return pd.DataFrame(rows).set_index("series_id")


def _dice(counts: np.ndarray, k: int) -> float:
    n = len(COUNTED)
    total = counts[:, k].sum() + counts[:, n + k].sum()
    return float(2 * counts[:, 2 * n + k].sum() / total) if total else float("nan")


def fold_measures(
    index: pd.DataFrame, counts: np.ndarray, size: int, truth: pd.DataFrame
) -> dict[str, Any]:
    """Dice per counted label, pooled over the subtypes' pixels and the mean over the subtypes
    the fold has; series volume agreement."""
    n = len(SUBTYPES)
    dice = {name: _dice(counts, k) for k, name in enumerate(COUNTED)}
    sizes = counts[:, :n].sum() + counts[:, len(COUNTED) : len(COUNTED) + n].sum()
    overlap = counts[:, 2 * len(COUNTED) : 2 * len(COUNTED) + n].sum()
    dice["pooled"] = float(2 * overlap / sizes) if sizes else float("nan")
    present = [dice[n] for k, n in enumerate(SUBTYPES) if counts[:, len(COUNTED) + k].sum() > 0]
    dice["mean"] = float(np.mean(present)) if present else float("nan")
    table = study_volume_table(index, counts, size, truth)
    volume = volume_agreement(table["pred_volume_ml_any"], table["true_volume_ml_any"])
    per_subtype = {
        name: volume_agreement(table[f"pred_volume_ml_{name}"], table[f"true_volume_ml_{name}"])
        for name in SUBTYPES
    }
    return {"dice": dice, "volume": volume, "volume_by_subtype": per_subtype, "series": len(table)}


def study_volume_table(
    index: pd.DataFrame, counts: np.ndarray, size: int, truth: pd.DataFrame
) -> pd.DataFrame:
    """One row per series: predicted and true volume of each counted label (mL)."""
    pred = predicted_volumes(index, counts, size).add_prefix("pred_")
    true = truth[[f"volume_ml_{n}" for n in COUNTED]].add_prefix("true_")
    table = truth[["study_id"]].join(pred).join(true)
    return table.reset_index()
