"""Training-time reading of the prepared cache: a torch Dataset of window stacks and labels.

Samples are uint8 tensors (C x H x W, with neighbouring slices of the same series stacked along C
when ``context`` > 0); conversion to float, normalisation and augmentation happen on the batch,
on the training device (see ``ichdet.data.augment``), so workers only decode.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ichdet.data.cache import cache_key, entry_path, read_entry, read_settings
from ichdet.labels import LABELS


def neighbour_rows(index: pd.DataFrame, context: int) -> np.ndarray:
    """(N, 2*context+1) row positions: each row's series neighbours by z, clamped at the ends.

    ``index`` must hold whole series; it need not be sorted.
    """
    order = index.reset_index(drop=True)
    key = order["slice_index"] if "slice_index" in order else order["z"]
    out = np.empty((len(order), 2 * context + 1), dtype=np.int64)
    for _, group in order.assign(_k=key).groupby(["study_id", "series_id"], sort=False):
        rows = group.sort_values("_k").index.to_numpy()
        n = len(rows)
        for offset in range(-context, context + 1):
            positions = np.clip(np.arange(n) + offset, 0, n - 1)
            out[rows, offset + context] = rows[positions]
    return out


def entry_paths(frame: pd.DataFrame, directory: Path, fmt: str) -> list[Path]:
    """The cache entry of every row (keyed by id, and by source for image files)."""
    sources = frame["source"] if "source" in frame else [""] * len(frame)
    kinds = frame["kind"] if "kind" in frame else ["dicom"] * len(frame)
    return [
        entry_path(directory, cache_key(i, s, k), fmt)
        for i, s, k in zip(frame["image_id"], sources, kinds, strict=True)
    ]


class SliceDataset(Dataset):
    """Window stacks from a prepared cache, with labels (NaN where unknown).

    ``__getitem__`` returns ``(x, y)``: x uint8 (C * (2*context+1)) x H x W, y float32 (6,).
    Rows whose cache entry is missing are dropped at construction (``self.missing`` lists them).
    """

    def __init__(
        self, index: pd.DataFrame, cache: str | os.PathLike, context: int = 0, check: bool = True
    ):
        self.directory = Path(cache)
        self.settings = read_settings(self.directory)
        frame = index.reset_index(drop=True)
        paths = entry_paths(frame, self.directory, self.settings.format)
        if check:
            exists = np.array([p.is_file() for p in paths], dtype=bool)
            self.missing = frame.loc[~exists, "image_id"].tolist()
            frame = frame[exists].reset_index(drop=True)
            paths = [p for p, ok in zip(paths, exists, strict=True) if ok]
        else:
            self.missing = []
        self.index = frame
        self.context = context
        self.neighbours = neighbour_rows(frame, context)
        self.paths = paths
        labels = np.array(frame.reindex(columns=list(LABELS)), dtype=np.float32)
        self.labels = torch.from_numpy(labels)

    @property
    def channels(self) -> int:
        return self.settings.channels * (2 * self.context + 1)

    def __len__(self) -> int:
        return len(self.index)

    def image(self, row: int) -> np.ndarray:
        path = self.paths[row]
        try:
            return read_entry(path, self.settings.format, self.settings.channels)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(
                f"{path}: damaged cache entry ({exc}); run `ichdet prepare --verify` to redo it"
            ) from exc

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.neighbours[i]
        if len(rows) == 1:
            x = self.image(int(rows[0]))
        else:
            x = np.concatenate([self.image(int(r)) for r in rows], axis=0)
        return torch.from_numpy(x), self.labels[i]
