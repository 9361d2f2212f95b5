"""Random augmentation of training batches, on the device that trains (GPU batch or CPU).

Geometric: horizontal flip and a small affine (kornia, per-sample parameters). Intensity: random
window jitter, per sample and per window, the same for every neighbouring slice of that window:
``x' = clip((x - 0.5) * s + 0.5 + t, 0, 1)``, which on a clipped window image equals changing the
window width by 1/s and its center by -t * width (exactly inside the window; values already
clipped at 0 or 1 stay clipped, as a wider window would not recover them from the cache).
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn


def random_window_jitter(
    x: torch.Tensor, windows: int, scale: float = 0.1, shift: float = 0.05
) -> torch.Tensor:
    """Per-sample, per-window contrast/brightness jitter of an N x C x H x W batch in [0, 1]."""
    n, c = x.shape[:2]
    if c % windows:
        raise ValueError(f"{c} channels are not a multiple of {windows} windows")
    s = 1 + (torch.rand(n, windows, device=x.device) * 2 - 1) * scale
    t = (torch.rand(n, windows, device=x.device) * 2 - 1) * shift
    reps = c // windows  # channel order: slice-major, window-minor
    s = s.repeat(1, reps).view(n, c, 1, 1).to(x.dtype)
    t = t.repeat(1, reps).view(n, c, 1, 1).to(x.dtype)
    return ((x - 0.5) * s + 0.5 + t).clamp_(0, 1)


class RandomTrainAugment(nn.Module):
    """Flips, small affine (rotation 10 deg, shift 5 %, scale 0.9-1.1) and window jitter."""

    def __init__(self, windows: int):
        super().__init__()
        self.windows = windows
        self.geometric = K.AugmentationSequential(
            K.RandomHorizontalFlip(p=0.5),
            K.RandomAffine(
                degrees=10.0, translate=(0.05, 0.05), scale=(0.9, 1.1), p=0.7, padding_mode="zeros"
            ),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return random_window_jitter(self.geometric(x), self.windows)

    def pair(self, x: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and their masks (N x L x H x W in [0, 1]) moved by the same flip and affine
        (masks interpolated bilinearly: soft edges); window jitter on the images only."""
        moved = self.geometric(torch.cat([x, masks.to(x.dtype)], dim=1))
        c = x.shape[1]
        return random_window_jitter(moved[:, :c], self.windows), moved[:, c:]
