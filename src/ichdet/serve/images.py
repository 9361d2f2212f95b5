"""What the viewer shows: a slice in a window preset, with an optional heat map, as PNG.

The heat map is occlusion sensitivity (Zeiler & Fergus 2014): the model's probability for the
label drops most where covering the image hides the finding. It needs only forward passes, so
it works with ONNX Runtime models (which have no gradients) as with PyTorch ones: one batch of
``GRID`` x ``GRID`` occluded copies of the slice's model input.
"""

from __future__ import annotations

import cv2
import numpy as np

from ichdet.data.windows import PRESETS, apply_window
from ichdet.dicom.read import read_hu
from ichdet.inference.decode import Row, series_inputs
from ichdet.inference.runners import Runner
from ichdet.labels import LABELS
from ichdet.reports.heatmaps import overlay

VIEW_WINDOWS = ("brain", "subdural", "bone")
GRID = 8


def window_image(path: str, window: str) -> np.ndarray:
    """A slice in a window preset: float32 H x W in [0, 1]."""
    preset = PRESETS[window]
    return apply_window(read_hu(path), preset.center, preset.width)


def occlusion_map(runner: Runner, x: np.ndarray, label: int, grid: int = GRID) -> np.ndarray:
    """(grid x grid) drop of the label's probability when each cell of ``x`` (uint8 C x H x W)
    is blanked, scaled to [0, 1] (zeros when nothing lowers it)."""
    _, h, w = x.shape
    copies = np.repeat(x[None], grid * grid + 1, axis=0)
    ys, xs = np.linspace(0, h, grid + 1).astype(int), np.linspace(0, w, grid + 1).astype(int)
    for k in range(grid * grid):
        i, j = divmod(k, grid)
        copies[k + 1, :, ys[i] : ys[i + 1], xs[j] : xs[j + 1]] = 0
    probs = runner(copies)[:, label]
    drop = np.clip(probs[0] - probs[1:], 0, None).reshape(grid, grid)
    return (drop / drop.max() if drop.max() > 0 else drop).astype(np.float32)


def slice_png(
    runner: Runner,
    rows: list[Row],
    n: int,
    window: str,
    heatmap: bool,
    label: str = "any",
) -> bytes:
    """PNG of slice ``n`` of a series (``rows`` in z order), heat map of ``label`` on top."""
    gray = window_image(rows[n][1], window)
    image: np.ndarray
    if not heatmap:
        image = (gray * 255).astype(np.uint8)
    else:
        context = runner.spec.context
        low, high = max(0, n - context), min(len(rows), n + context + 1)
        ids, volume, _ = series_inputs(rows[low:high], runner.spec.settings, context)
        wanted = rows[n][0]
        if volume is None or wanted not in ids:
            raise ValueError("the slice could not be decoded")
        cam = occlusion_map(runner, volume[ids.index(wanted)], LABELS.index(label))
        image = cv2.cvtColor(overlay(gray, cam), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
