"""Training-time reading for the segmenter: window stacks from the cache and their masks.

Masks are read from the index's ``mask`` files (ichdet.data.masks) and resized to the cache's
size by area averaging: the target of a pixel is the share of it that is blood (soft edges, the
same partial volume the image shows).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import torch

from ichdet.data.dataset import SliceDataset
from ichdet.data.masks import slice_mask
from ichdet.data.windows import resize_image, to_uint8
from ichdet.labels import SUBTYPES

MASK_COLUMNS = ("mask_known", "mask")


def known_masks(index: pd.DataFrame) -> pd.DataFrame:
    """The rows whose mask is known (``ichdet index --masks``); an error when there is none."""
    if not set(MASK_COLUMNS) <= set(index.columns):
        raise ValueError("the index has no masks; build it with `ichdet index --masks DIR`")
    known = index[index["mask_known"].astype(bool)]
    if known.empty:
        raise ValueError("no slice of the index has a known mask")
    return known


class SegmentDataset(SliceDataset):
    """``__getitem__`` returns ``(x, y)``: x uint8 C x H x W as SliceDataset gives it, y uint8
    5 x H x W (share of each pixel that is blood, 0..255) in SUBTYPES order."""

    def __init__(
        self, index: pd.DataFrame, cache: str | os.PathLike, context: int = 0, check: bool = True
    ):
        super().__init__(known_masks(index), cache, context=context, check=check)
        self._read_mask_columns()

    def _read_mask_columns(self) -> None:
        frame = self.index
        known = frame["mask_known"] if "mask_known" in frame else pd.Series(False, frame.index)
        self.mask_known = known.fillna(False).astype(bool).tolist()
        paths = frame["mask"] if "mask" in frame else pd.Series("", frame.index)
        self.mask_paths = paths.fillna("").astype(str).tolist()
        self.shapes = list(
            zip(frame["rows"].astype(int), frame["columns"].astype(int), strict=True)
        )

    def target(self, i: int) -> np.ndarray:
        """The mask of row ``i`` at the cache's size (zeros where the mask is unknown)."""
        mask = slice_mask(self.mask_known[i], self.mask_paths[i], self.shapes[i])
        size = self.settings.size
        if mask is None or not mask.any():
            return np.zeros((len(SUBTYPES), size, size), np.uint8)
        # one plane at a time: OpenCV resizes at most 4 channels by area
        return to_uint8(np.stack([resize_image(m.astype(np.float32), size) for m in mask]))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = super().__getitem__(i)
        return x, torch.from_numpy(self.target(i))


class LabelledMaskDataset(SegmentDataset):
    """The slice CNN's training rows with their masks where known (the mask head's target):
    ``__getitem__`` returns ``(x, (labels, masks, mask_known))``; labels as SliceDataset gives
    them, masks as SegmentDataset gives them (zeros where unknown), mask_known a 0/1 float."""

    def __init__(
        self, index: pd.DataFrame, cache: str | os.PathLike, context: int = 0, check: bool = True
    ):
        SliceDataset.__init__(self, index, cache, context=context, check=check)
        self._read_mask_columns()
        if not any(self.mask_known):
            raise ValueError(
                "a mask loss needs masks: no training slice has a known mask (build the index "
                "with `ichdet index --masks DIR`)"
            )

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        x, y = SliceDataset.__getitem__(self, i)
        known = torch.tensor(float(self.mask_known[i]))
        return x, (y, torch.from_numpy(self.target(i)), known)
