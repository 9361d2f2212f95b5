"""``ichdet evaluate OUT INDEX --masks``: predicted masks (``predict --segmenter``) against the
index's true masks (``index --masks``), per series, as INSTANCE 2022 and the volume papers score.

Masks are compared on each slice's own pixel grid: the predicted masks (at the segmenter's size)
are scaled up by nearest neighbour. Per series and subtype: Dice and the 95th-percentile
Hausdorff distance (mm; slice spacing from positions). Summaries: the mean Dice over series
where the subtype is present in the truth or the prediction, the pooled Dice, the median HD95
over series where both have it; volume agreement (CCC, Bland-Altman, mL) of every series,
the predicted volume taken from the segmenter's grid as ``predict`` reports it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichdet.data.masks import read_series_masks, slice_mask, upscale_masks
from ichdet.evaluation.seg_metrics import dice, hd95, volume_agreement
from ichdet.evaluation.volume import volume_ml
from ichdet.labels import SUBTYPES

LABELLED = (*SUBTYPES, "any")


def _with_any(masks: np.ndarray) -> np.ndarray:
    return np.concatenate([masks, masks.any(axis=1, keepdims=True)], axis=1)


def score_series(path: Path, index: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per label of the series in ``path``: Dice, HD95, volumes (pred, true)."""
    ids, z, predicted, pixel = read_series_masks(path)
    rows = index.set_index(index["image_id"].astype(str)).reindex(ids)
    if rows["mask_known"].isna().any() or not rows["mask_known"].astype(bool).all():
        raise ValueError("some of its slices have no known mask in the index")
    shape = (int(rows["rows"].iloc[0]), int(rows["columns"].iloc[0]))
    truth = np.stack([slice_mask(True, str(p or ""), shape) for p in rows["mask"].fillna("")])  # type: ignore[misc]
    spacing = float(rows["pixel_spacing"].iloc[0])
    gaps = np.diff(np.sort(z))
    voxel = (float(np.median(gaps)) if len(gaps) else spacing, spacing, spacing)
    pred_full, true_all, pred_all = (
        _with_any(upscale_masks(predicted, shape)),
        _with_any(truth),
        _with_any(predicted),
    )
    out = []
    for k, label in enumerate(LABELLED):
        out.append(
            {
                "series_id": path.stem,
                "label": label,
                "dice": dice(pred_full[:, k], true_all[:, k]),
                "hd95_mm": hd95(pred_full[:, k], true_all[:, k], voxel),
                "pred_volume_ml": volume_ml(pred_all[:, k], z, pixel),
                "true_volume_ml": volume_ml(true_all[:, k], z, (spacing, spacing)),
                "pred_voxels": int(pred_full[:, k].sum()),
                "true_voxels": int(true_all[:, k].sum()),
                "overlap_voxels": int((pred_full[:, k] & true_all[:, k]).sum()),
            }
        )
    return out


def summarise(table: pd.DataFrame) -> dict[str, Any]:
    """Per label: mean Dice (series where either has it), pooled Dice, median HD95 (series
    where both have it), series missed/false; volume agreement."""
    labels = {}
    for label, rows in table.groupby("label", sort=False):
        present = rows[(rows["pred_voxels"] + rows["true_voxels"]) > 0]
        both = rows[(rows["pred_voxels"] > 0) & (rows["true_voxels"] > 0)]
        size = rows["pred_voxels"].sum() + rows["true_voxels"].sum()
        labels[str(label)] = {
            "dice_mean": float(present["dice"].mean()) if len(present) else float("nan"),
            "dice_pooled": float(2 * rows["overlap_voxels"].sum() / size) if size else float("nan"),
            "hd95_median_mm": float(both["hd95_mm"].median()) if len(both) else float("nan"),
            "series_with_blood": int((rows["true_voxels"] > 0).sum()),
            "missed": int(((rows["true_voxels"] > 0) & (rows["pred_voxels"] == 0)).sum()),
            "false_found": int(((rows["true_voxels"] == 0) & (rows["pred_voxels"] > 0)).sum()),
            "volume": volume_agreement(rows["pred_volume_ml"], rows["true_volume_ml"]),
        }
    return {"series": int(table["series_id"].nunique()), "labels": labels}


def evaluate_masks(
    predictions: str | os.PathLike, index_path: str | os.PathLike
) -> tuple[dict[str, Any], pd.DataFrame, list[tuple[str, str]]]:
    """(summary, per-series rows, skipped series as (file, reason)) of ``predictions`` (the
    folder ``predict --segmenter`` wrote, or its ``masks`` folder) against the index."""
    folder = Path(predictions)
    folder = folder / "masks" if (folder / "masks").is_dir() else folder
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"{predictions}: no predicted masks (run predict --segmenter)")
    index = pd.read_parquet(index_path)
    if "mask_known" not in index:
        raise ValueError(f"{index_path}: the index has no masks (ichdet index --masks)")
    rows, skipped = [], []
    for path in files:
        try:
            rows += score_series(path, index)
        except ValueError as exc:
            skipped.append((os.fspath(path), str(exc)))
    if not rows:
        raise ValueError("no predicted series has known masks in the index")
    table = pd.DataFrame(rows)
    return summarise(table), table, skipped
