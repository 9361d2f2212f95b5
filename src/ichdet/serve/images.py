"""What the viewer shows: a slice in a window preset, with an optional heat map (occlusion
sensitivity, ``ichdet.reports.heatmaps.occlusion_map``: forward passes only, so ONNX models have
one too), as PNG."""

from __future__ import annotations

import cv2
import numpy as np

from ichdet.data.windows import PRESETS, apply_window
from ichdet.dicom.read import read_hu
from ichdet.inference.decode import Row, display_source
from ichdet.inference.runners import Runner
from ichdet.labels import LABELS
from ichdet.reports.heatmaps import model_input, occlusion_map, overlay

VIEW_WINDOWS = ("brain", "subdural", "bone")


def window_image(path: str, window: str) -> np.ndarray:
    """A slice in a window preset: float32 H x W in [0, 1]."""
    preset = PRESETS[window]
    return apply_window(read_hu(path), preset.center, preset.width)


def slice_png(
    runner: Runner,
    rows: list[Row],
    n: int,
    window: str,
    heatmap: bool,
    label: str = "any",
) -> bytes:
    """PNG of slice ``n`` of a series (``rows`` in z order), heat map of ``label`` on top."""
    gray = window_image(display_source(rows[n]), window)  # a slab shows its middle slice
    image: np.ndarray
    if not heatmap:
        image = (gray * 255).astype(np.uint8)
    else:
        cam = occlusion_map(runner, model_input(runner, rows, n), LABELS.index(label))
        image = cv2.cvtColor(overlay(gray, cam), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
