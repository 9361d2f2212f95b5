"""The image as evidence: a cheap look at a few slices of a series before it is read.

Headers lie (a bone series labelled STANDARD, a chest series without BodyPartExamined, a
kernel name no table knows). On three slices through the middle of the series (45, 60 and 75 %
of its z range, where a head series shows brain inside a closed skull) this measures:

- ``skull_ring``: the share of 72 rays from the body's centre that meet bone (> 300 HU) before
  they leave the body: ~1 for a head, low for a chest (rays leave through the lungs);
- ``brain_share``: the share of the pixels inside the skull (closed bone ring, filled) whose
  smoothed HU lie in 0-80 (brain, blood, CSF): high for a head;
- ``noise_hu``: the robust spread (1.4826 x MAD) of the image minus its 3 x 3 mean inside the
  skull: a few HU for a soft-tissue kernel, tens for a bone kernel;
- ``undershoot``: the share of pixels just inside the inner table below -50 HU: the dark rim a
  bone kernel's edge overshoot leaves, absent in a soft kernel;
- ``metal``: the share of body pixels over 3000 HU (streaks follow); ``edge``: the share of the
  image border covered by the body (a field of view that cuts the head).

The medians over the slices decide: a head when skull_ring >= 0.7 and brain_share >= 0.4; a
sharp (bone) kernel when noise_hu > 12 or undershoot > 0.15. The anatomy is found on the slice
reduced to ~128 px; the noise and the rim are read from the full-resolution pixels. The two real
soft-kernel samples in ../shared measure noise 1.8-2.5 HU and undershoot 0.00; the synthetic
bone-kernel series 25 HU and 0.18 (benchmarks/RESULTS.md). These thresholds are set by those
few examples and the physics, not fitted on a labelled set of real series: a site's own bone
series that pass as soft would show here first (``series.csv``, columns ``image_*``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from ichdet.dicom.read import read_hu
from ichdet.dicom.sources import read_source

FRACTIONS = (0.45, 0.6, 0.75)
MIN_RING, MIN_BRAIN = 0.7, 0.4
MAX_NOISE_HU, MAX_UNDERSHOOT = 12.0, 0.15
METAL_NOTE, EDGE_NOTE = 5e-4, 0.02
RAYS = 72
WORK_SIZE = 128  #: the anatomy is measured on the slice reduced to about this size


@dataclass(frozen=True)
class ImageVerdict:
    """The measures (medians over the slices looked at) and what they say."""

    slices: int
    skull_ring: float
    brain_share: float
    noise_hu: float
    undershoot: float
    metal: float
    edge: float
    #: the HU images looked at, by source: the prediction does not decode them again
    images: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def head(self) -> bool:
        return self.skull_ring >= MIN_RING and self.brain_share >= MIN_BRAIN

    @property
    def sharp(self) -> bool:
        return self.noise_hu > MAX_NOISE_HU or self.undershoot > MAX_UNDERSHOOT

    def problems(self) -> list[str]:
        found = []
        # a bone kernel's noise spoils the brain histogram: then only the skull ring counts
        if not self.head and not (self.sharp and self.skull_ring >= MIN_RING):
            found.append(
                f"not a head on the image (skull ring {self.skull_ring:.2f}, "
                f"brain {self.brain_share:.2f})"
            )
        if self.sharp:
            found.append(
                f"bone kernel on the image (noise {self.noise_hu:.0f} HU, "
                f"undershoot {self.undershoot:.2f})"
            )
        return found

    def notes(self) -> list[str]:
        found = []
        if self.metal > METAL_NOTE:
            found.append(f"metal ({100 * self.metal:.2f} % of the head over 3000 HU)")
        if self.edge > EDGE_NOTE:
            found.append("head cut by the field of view")
        return found

    def to_dict(self) -> dict[str, float]:
        fields = ("slices", "skull_ring", "brain_share", "noise_hu", "undershoot", "metal", "edge")
        return {f"image_{k}": round(float(getattr(self, k)), 4) for k in fields}


def pick(count: int) -> list[int]:
    """Positions (in z order) of the slices to look at."""
    if count <= 0:
        return []
    return sorted({min(count - 1, int(f * (count - 1) + 0.5)) for f in FRACTIONS})


def _rays(body: np.ndarray, bone: np.ndarray) -> float:
    """Share of rays from the body's centre that meet bone before leaving the body."""
    ys, xs = np.nonzero(body)
    if len(ys) == 0:
        return 0.0
    cy, cx = ys.mean(), xs.mean()
    h, w = body.shape
    radius = np.arange(0, math.hypot(h, w) / 2, 1.0)
    angles = np.linspace(0, 2 * np.pi, RAYS, endpoint=False)
    yy = np.clip((cy + np.outer(np.sin(angles), radius)).astype(int), 0, h - 1)
    xx = np.clip((cx + np.outer(np.cos(angles), radius)).astype(int), 0, w - 1)
    inside, hit = body[yy, xx], bone[yy, xx]
    leave = np.where(inside.all(axis=1), inside.shape[1], np.argmin(inside, axis=1))
    met = [bool(hit[k, : leave[k]].any()) for k in range(RAYS)]
    return float(np.mean(met))


def _largest(mask: np.ndarray) -> np.ndarray:
    image = np.ascontiguousarray(mask, dtype=np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(image, connectivity=4)
    if count <= 1:
        return np.zeros_like(mask)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def _inside_skull(bone: np.ndarray) -> np.ndarray:
    """Pixels enclosed by the (closed) bone ring, bone excluded."""
    closed = cv2.morphologyEx(bone.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    flood = np.pad(1 - closed, 1, constant_values=1).astype(np.uint8)
    mask = np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8)
    cv2.floodFill(flood, mask, (0, 0), 2)
    return (flood[1:-1, 1:-1] == 1) & ~bone


def _full(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A mask of the reduced image at the full image's size."""
    image = np.ascontiguousarray(mask, dtype=np.uint8)
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def measure(hu: np.ndarray) -> dict[str, float]:
    """The measures of one slice (float32 HU, H x W). The anatomy is found at <= 128 px; the
    noise and the rim are read from the full-resolution pixels (a kernel shows there)."""
    step = max(1, max(hu.shape) // WORK_SIZE)
    small = (
        hu
        if step == 1
        else cv2.resize(hu, None, fx=1 / step, fy=1 / step, interpolation=cv2.INTER_AREA)
    )
    local = cv2.blur(small, (3, 3))  # a bone kernel's dark rims must not cut the body apart
    body = _largest(local > -300)
    bone = body & (small > 300)
    inner = _inside_skull(bone)
    core = cv2.erode(inner.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    near = cv2.dilate(bone.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    high = (hu - cv2.blur(hu, (3, 3)))[_full(core, hu.shape)][::4]
    noise = 1.4826 * float(np.median(np.abs(high - np.median(high)))) if high.size else 0.0
    rim = _full(inner & near, hu.shape)
    border = np.concatenate([body[0], body[-1], body[:, 0], body[:, -1]])
    return {
        "skull_ring": _rays(body, bone),
        "brain_share": float(((local >= 0) & (local <= 80))[inner].mean()) if inner.any() else 0,
        "noise_hu": noise,
        "undershoot": float((hu[rim] < -50).mean()) if rim.any() else 0.0,
        "metal": float((local[body] > 3000).mean()) if body.any() else 0.0,
        "edge": float(border.mean()),
    }


def check_series(sources: list[str]) -> ImageVerdict:
    """Look at a few slices of a series (``sources`` in z order); DicomError if one fails."""
    images = {s: read_hu(read_source(s)) for s in (sources[k] for k in pick(len(sources)))}
    found = [measure(hu) for hu in images.values()]
    keys = ("skull_ring", "brain_share", "noise_hu", "undershoot", "metal", "edge")
    medians = {k: float(np.median([f[k] for f in found])) if found else 0.0 for k in keys}
    return ImageVerdict(slices=len(found), **medians, images=images)
