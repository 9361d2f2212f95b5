"""Random augmentation of training batches, on the device that trains (GPU batch or CPU).

Geometric: a horizontal flip (p 0.5) and a small affine (p 0.7: rotation up to 10 degrees, shift
up to 5 % of the side, scale 0.9-1.1), per sample, composed into one matrix per sample and applied
by one ``grid_sample`` over the batch (bilinear, zeros outside). Images and their masks share that
grid. A flip alone lands on pixel centres exactly, so it is lossless. Torch's ``affine_grid`` and
``grid_sample`` do the work that kornia's ``AugmentationSequential`` did before, with the same
ranges, at a third of its cost or less on a CPU batch (benchmarks/bench_train_step.py).

Intensity: random window jitter, per sample and per window, the same for every neighbouring slice
of that window: ``x' = clip((x - 0.5) * s + 0.5 + t, 0, 1)``, which on a clipped window image
equals changing the window width by 1/s and its center by -t * width (exactly inside the window;
values already clipped at 0 or 1 stay clipped, as a wider window would not recover them from the
cache).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


def random_affine_matrices(
    n: int,
    device: torch.device | str = "cpu",
    flip: float = 0.5,
    affine: float = 0.7,
    degrees: float = 10.0,
    translate: float = 0.05,
    scale: tuple[float, float] = (0.9, 1.1),
) -> torch.Tensor:
    """N x 2 x 3 sampling matrices for ``F.affine_grid`` (output -> input, normalised
    coordinates of a square image): each sample flipped with probability ``flip``, then rotated,
    scaled and shifted with probability ``affine`` (identity otherwise)."""

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, *shape, device=device)

    moved = torch.rand(n, device=device) < affine
    angle = torch.where(moved, uniform(-math.radians(degrees), math.radians(degrees)), 0.0)
    zoom = torch.where(moved, uniform(*scale), 1.0)
    # a shift of ``translate`` of the side is 2 * translate in normalised coordinates
    shift = uniform(-2 * translate, 2 * translate, 2) * moved[:, None]
    mirror = torch.where(torch.rand(n, device=device) < flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # the inverse of "flip, then rotate and scale about the centre, then shift": for an output
    # point p the input point is F R^-1 (p - shift) / zoom, F = diag(mirror, 1)
    linear = torch.stack(
        [torch.stack([cos * mirror, sin * mirror], 1), torch.stack([-sin, cos], 1)], 1
    )
    offset = -(linear @ shift[:, :, None])
    return torch.cat([linear, offset], dim=2)


def warp(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Resample an N x C x H x W batch through per-sample ``affine_grid`` matrices."""
    grid = F.affine_grid(matrices.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class RandomTrainAugment(nn.Module):
    """Flips, small affine (rotation 10 deg, shift 5 %, scale 0.9-1.1) and window jitter."""

    def __init__(self, windows: int):
        super().__init__()
        self.windows = windows

    def _geometric(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"expected square images, got {tuple(x.shape[-2:])}")
        return warp(x, random_affine_matrices(len(x), x.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return random_window_jitter(self._geometric(x), self.windows)

    def pair(self, x: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and their masks (N x L x H x W in [0, 1]) moved by the same flip and affine
        (masks interpolated bilinearly: soft edges); window jitter on the images only."""
        moved = self._geometric(torch.cat([x, masks.to(x.dtype)], dim=1))
        c = x.shape[1]
        return random_window_jitter(moved[:, :c], self.windows), moved[:, c:]
