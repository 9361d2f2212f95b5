"""What the scanner adds to the anatomy, drawn per study (domain randomization where realism
stops): resolution (the point spread of the kernel), noise with grain (correlated, not white),
more noise where bone hardens the beam, cupping, a calibration offset and a gentle monotone
intensity curve (within a few HU, so blood stays blood and brain stays brain), beam-hardening
streaks between the petrous bones, streaks from metal and motion ghosts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Scanner:
    psf_mm: float  # sigma of the point spread (soft kernels blur more)
    noise_hu: float  # noise sigma in brain, in 0.5 mm pixels
    grain_px: float  # sigma of the noise's correlation
    cupping: float  # HU brighter at the edge of the field than at its centre (or darker)
    offset: float  # calibration offset (HU)
    curve: tuple[float, float, float]  # amplitude (HU), period (HU), phase of the intensity curve


def draw_scanner(rng: np.random.Generator) -> Scanner:
    return Scanner(
        psf_mm=float(rng.uniform(0.35, 1.0)),
        noise_hu=float(rng.uniform(2.0, 5.5)),
        grain_px=float(rng.uniform(0.5, 1.4)),
        cupping=float(rng.uniform(-6, 8)),
        offset=float(rng.uniform(-4, 4)),
        curve=(float(rng.uniform(0, 3)), float(rng.uniform(120, 300)), float(rng.uniform(0, 6.3))),
    )


def blur(hu: np.ndarray, sigma_px: float) -> np.ndarray:
    return cv2.GaussianBlur(hu, (0, 0), sigma_px) if sigma_px > 0.05 else hu


def finish(
    scanner: Scanner,
    hu: np.ndarray,
    radius2: np.ndarray,
    spacing: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Point spread, calibration, intensity curve, cupping and grainy noise (``radius2``: the
    squared distance from the field's centre, as a share of the field's radius)."""
    out = blur(hu, scanner.psf_mm / spacing)
    amp, period, phase = scanner.curve
    soft = np.exp(-(((out - 40) / 150) ** 2))
    # slope of the curve at most 2 pi amp / period < 0.2: monotone, so the order of tissues holds
    out = out + scanner.offset + soft * amp * np.sin(2 * math.pi * out / period + phase)
    out = out + scanner.cupping * (radius2 - 0.5)
    bone = float(np.mean(out > 600))
    white = rng.standard_normal(hu.shape, dtype=np.float32)
    grain = blur(white, scanner.grain_px)
    grain *= np.float32(1.0 / (float(grain.std()) + 1e-6))
    # noise_hu is the sigma of a 0.5 mm pixel; a larger pixel averages more photons
    sigma = scanner.noise_hu * min(1.0, 0.5 / spacing) * (1 + 4 * bone)
    return (out + grain * np.float32(sigma)).astype(np.float32)


def line_distance(x: np.ndarray, y: np.ndarray, x0: float, y0: float, angle: float) -> np.ndarray:
    return np.abs((x - x0) * math.sin(angle) - (y - y0) * math.cos(angle))


def hounsfield_bar(
    hu: np.ndarray, x: np.ndarray, y: np.ndarray, petrous: np.ndarray, strength: float
) -> None:
    """A dark band between the two petrous bones, with thin streaks fanning from it."""
    left, right = petrous & (x > np.median(x[petrous])), petrous & (x <= np.median(x[petrous]))
    if left.sum() < 4 or right.sum() < 4:
        return
    (x0, y0), (x1, y1) = ((float(x[m].mean()), float(y[m].mean())) for m in (left, right))
    angle = math.atan2(y1 - y0, x1 - x0)
    inside = (hu > -300) & (hu < 300)
    band = np.exp(-(line_distance(x, y, x0, y0, angle) ** 2) / (2 * 4.0**2))
    hu[inside] -= (strength * band)[inside]
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    for k, tilt in enumerate((-0.5, -0.2, 0.25, 0.55)):
        streak = np.exp(-(line_distance(x, y, xm, ym, angle + tilt) ** 2) / 2.0)
        hu[inside] += ((-1) ** k * 0.5 * strength * streak)[inside]


def metal_streaks(hu: np.ndarray, x: np.ndarray, y: np.ndarray, metal: np.ndarray) -> None:
    """Alternating bright and dark streaks radiating from metal, fading with distance."""
    cx, cy = float(x[metal].mean()), float(y[metal].mean())
    r = np.hypot(x - cx, y - cy)
    inside = hu > -500
    for k in range(12):
        angle = k * math.pi / 12 + 0.1
        streak = np.exp(-(line_distance(x, y, cx, cy, angle) ** 2) / 2.0) / (1 + r / 25)
        hu[inside] += ((-1) ** k * 350 * streak)[inside]


def motion_ghost(hu: np.ndarray, shift_px: float, angle: float) -> np.ndarray:
    """A faint copy moved by ``shift_px`` and streaks across: the head moved during the scan."""
    m = np.array(
        [[1, 0, shift_px * math.cos(angle)], [0, 1, shift_px * math.sin(angle)]], np.float32
    )
    moved = cv2.warpAffine(hu, m, (hu.shape[1], hu.shape[0]), borderValue=-1000.0)
    out = 0.75 * hu + 0.25 * moved
    rows = np.arange(hu.shape[0], dtype=np.float32)[:, None]
    cols = np.arange(hu.shape[1], dtype=np.float32)[None, :]
    wave = np.sin((rows * math.cos(angle + 1.2) + cols * math.sin(angle + 1.2)) * 0.35)
    head = hu > -500
    out[head] += (6.0 * wave)[head]
    return out.astype(np.float32)
