"""Hounsfield units -> window images in [0, 1]. Pure numpy, float32 throughout.

A window (center c, width w) maps HU in [c - w/2, c + w/2] linearly onto [0, 1]. Three ways:

- :func:`apply_window`: the standard radiology window, values outside clipped to 0 or 1.
- :func:`apply_window_blackout_minmax`: the RSNA write-up's variant: values below the window go to
  its bottom, values *above* it also go to its bottom (bone turns black in the brain window), then
  the image is min-max scaled per image. Its output depends on the image content (a slice without
  any pixel above the window bottom scales differently), so it is not comparable across slices.
- :func:`apply_window_sigmoid`: a smooth window, 0.5 at the center and ``eps`` / ``1 - eps`` at the
  window edges, which keeps some contrast beyond them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Window:
    """A named display window in HU."""

    name: str
    center: float
    width: float

    @property
    def low(self) -> float:
        return self.center - self.width / 2

    @property
    def high(self) -> float:
        return self.center + self.width / 2


#: Named presets (center, width in HU).
PRESETS: dict[str, Window] = {
    w.name: w
    for w in (
        Window("brain", 40, 80),
        Window("subdural", 80, 200),
        Window("bone", 600, 2000),
        Window("soft_tissue", 40, 380),
        Window("stroke", 40, 40),
    )
}
DEFAULT_WINDOWS: tuple[str, ...] = ("brain", "subdural", "bone")


def parse_windows(spec: str | Iterable[str]) -> tuple[Window, ...]:
    """``"brain,subdural,bone"`` or ``"brain,60/120"`` -> Windows (``c/w`` gives a custom one)."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in PRESETS:
            out.append(PRESETS[name])
        elif "/" in name:
            center, width = (float(p) for p in name.split("/", 1))
            if width <= 0:
                raise ValueError(f"window width must be positive: {name!r}")
            out.append(Window(name, center, width))
        else:
            raise ValueError(f"unknown window {name!r}; presets: {', '.join(PRESETS)} or C/W")
    if not out:
        raise ValueError("no windows given")
    return tuple(out)


def apply_window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Standard window: ``clip((hu - (center - width/2)) / width, 0, 1)`` as float32."""
    low = np.float32(center - width / 2)
    out = np.subtract(hu, low, dtype=np.float32)
    out *= np.float32(1.0 / width)
    return np.clip(out, 0.0, 1.0, out=out)


def apply_window_blackout_minmax(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """The write-up's window: below and above the window -> window bottom; then per-image min-max.

    An image with no contrast left inside the window returns all zeros.
    """
    low = np.float32(center - width / 2)
    high = np.float32(center + width / 2)
    img = np.asarray(hu, dtype=np.float32).copy()
    img[(img < low) | (img > high)] = low
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros_like(img)
    img -= np.float32(lo)
    img *= np.float32(1.0 / (hi - lo))
    return img


def apply_window_sigmoid(
    hu: np.ndarray, center: float, width: float, eps: float = 1 / 255
) -> np.ndarray:
    """Sigmoid window: ``1 / (1 + exp(-2 k (hu - center) / width))`` with ``k = ln(1/eps - 1)``.

    Gives 0.5 at the center, ``1 - eps`` at the top of the window and ``eps`` at its bottom.
    """
    k = np.log(1.0 / eps - 1.0)
    z = np.subtract(hu, np.float32(center), dtype=np.float32)
    z *= np.float32(-2.0 * k / width)
    np.exp(z, out=z)
    z += np.float32(1.0)
    return np.reciprocal(z, out=z)


_KINDS = {
    "clip": apply_window,
    "blackout_minmax": apply_window_blackout_minmax,
    "sigmoid": apply_window_sigmoid,
}


def window_stack(
    hu: np.ndarray, windows: Sequence[Window | str] = DEFAULT_WINDOWS, kind: str = "clip"
) -> np.ndarray:
    """Stack windows of one H x W HU image into a float32 C x H x W array in [0, 1]."""
    if kind not in _KINDS:
        raise ValueError(f"unknown window kind {kind!r}; one of {', '.join(_KINDS)}")
    func = _KINDS[kind]
    ws = [PRESETS[w] if isinstance(w, str) else w for w in windows]
    out = np.empty((len(ws), *hu.shape), dtype=np.float32)
    for i, w in enumerate(ws):
        out[i] = func(hu, w.center, w.width)
    return out


def resize_image(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an H x W image to ``size`` (square int or (height, width)), keeping its dtype.

    Area averaging when shrinking (no aliasing of noise), bilinear when enlarging.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if img.shape == (height, width):
        return img
    shrink = height < img.shape[0] or width < img.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interp)


def resize_stack(stack: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a C x H x W stack channel by channel (one cv2 call over H x W x C)."""
    moved = np.ascontiguousarray(np.moveaxis(stack, 0, -1))
    out = resize_image(moved, size)
    if out.ndim == 2:  # cv2 drops a single channel
        out = out[..., None]
    return np.ascontiguousarray(np.moveaxis(out, -1, 0))


def to_uint8(stack: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding (for display and caches)."""
    return np.clip(np.rint(stack * 255.0), 0, 255).astype(np.uint8)
