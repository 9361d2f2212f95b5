"""Series as training samples for the sequence stage: slice embeddings in z order, labels of
the slices (NaN where unknown) and of the study, random subsampling and reversal, padding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ichdet.labels import LABELS

#: Share of slices kept when a training series is subsampled.
KEEP = 0.75


@dataclass
class Series:
    study_id: str
    series_id: str
    image_ids: list[str]
    rows: np.ndarray  # positions in the embedding arrays, in z order
    z: np.ndarray  # (L,) mm
    labels: np.ndarray  # (L, 6) float, NaN = unknown
    study_labels: np.ndarray  # (6,) float, NaN = unknown


def build_series(frame: pd.DataFrame, ids: np.ndarray, study_truth: pd.DataFrame) -> list[Series]:
    """One :class:`Series` per (study, series) of ``frame`` in z order, keeping the images that
    have an embedding (``ids``); series with no such image are left out."""
    position = pd.Series(np.arange(len(ids)), index=pd.Index(ids))
    frame = frame[frame["image_id"].astype(str).isin(position.index)]
    order = "slice_index" if "slice_index" in frame else "z"
    out = []
    for (study, series), group in frame.groupby(["study_id", "series_id"], sort=False):
        group = group.sort_values(order)
        image_ids = group["image_id"].astype(str).tolist()
        out.append(
            Series(
                study_id=str(study),
                series_id=str(series),
                image_ids=image_ids,
                rows=position.loc[image_ids].to_numpy(),
                z=group["z"].to_numpy(dtype=np.float32),
                labels=group.reindex(columns=list(LABELS)).to_numpy(dtype=np.float32),
                study_labels=study_truth.loc[study].to_numpy(dtype=np.float32),
            )
        )
    return out


class SeriesSet(Dataset):
    """Samples are dicts of tensors for one series; ``train`` turns on the random augmentations
    the anchors used: dropping slices at random (in ``subsample`` of the series) and reversing
    the order (half of the series, when ``reverse``)."""

    def __init__(
        self,
        series: list[Series],
        features: np.ndarray,
        logits: np.ndarray,
        train: bool = False,
        subsample: float = 0.0,
        reverse: bool = False,
    ):
        self.series, self.features, self.logits = series, features, logits
        self.train, self.subsample, self.reverse = train, subsample, reverse
        self.max_len = max((len(s.rows) for s in series), default=0)

    def __len__(self) -> int:
        return len(self.series)

    def positions(self, n: int) -> np.ndarray:
        """Which slices of a series of ``n`` this sample shows, in which order."""
        keep = np.arange(n)
        if not self.train:
            return keep
        if n > 2 and torch.rand(()) < self.subsample:
            chosen = (torch.rand(n) < KEEP).numpy()
            keep = keep[chosen] if chosen.sum() >= 2 else keep
        if self.reverse and torch.rand(()) < 0.5:
            keep = keep[::-1]
        return keep

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.series[i]
        keep = self.positions(len(s.rows))
        rows = s.rows[keep]
        return {
            "features": torch.from_numpy(self.features[rows]),
            "logits": torch.from_numpy(self.logits[rows]),
            "z": torch.from_numpy(s.z[keep].copy()),
            "labels": torch.from_numpy(s.labels[keep].copy()),
            "study_labels": torch.from_numpy(s.study_labels),
        }


def collate_series(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad to the longest series of the batch; ``mask`` marks the real slices."""
    n = max(len(item["z"]) for item in items)
    batch: dict[str, torch.Tensor] = {}
    for key, fill in (("features", 0.0), ("logits", 0.0), ("z", 0.0), ("labels", float("nan"))):
        first = items[0][key]
        out = torch.full((len(items), n, *first.shape[1:]), fill, dtype=first.dtype)
        for row, item in enumerate(items):
            out[row, : len(item[key])] = item[key]
        batch[key] = out
    lengths = torch.tensor([len(item["z"]) for item in items])
    batch["mask"] = torch.arange(n)[None, :] < lengths[:, None]
    batch["study_labels"] = torch.stack([item["study_labels"] for item in items])
    return batch
