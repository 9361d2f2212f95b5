"""What the viewer shows: a slice in a window preset, with an optional heat map (occlusion
sensitivity, ``ichdet.reports.heatmaps.occlusion_map``: forward passes only, so ONNX models have
one too) or the segmentation (``predict --segmenter``), as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ichdet.data.windows import PRESETS, apply_window
from ichdet.dicom.read import read_hu
from ichdet.inference.decode import Row, display_source
from ichdet.inference.runners import Runner
from ichdet.labels import LABELS
from ichdet.reports.heatmaps import model_input, occlusion_map, overlay
from ichdet.reports.seg_overlay import mask_overlay

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
    masks: np.ndarray | None = None,
) -> bytes:
    """PNG of slice ``n`` of a series (``rows`` in z order), heat map of ``label`` or the
    slice's ``masks`` (5 x h x w) on top."""
    gray = window_image(display_source(rows[n]), window)  # a slab shows its middle slice
    image: np.ndarray
    if masks is not None:
        image = cv2.cvtColor(mask_overlay(gray, masks), cv2.COLOR_RGB2BGR)
    elif not heatmap:
        image = (gray * 255).astype(np.uint8)
    else:
        cam = occlusion_map(runner, model_input(runner, rows, n), LABELS.index(label))
        image = cv2.cvtColor(overlay(gray, cam), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def slice_masks(result: Path, summary: dict[str, Any], n: int) -> np.ndarray:
    """Slice ``n``'s masks from the study's mask file; empty ones for a slice not segmented.
    LookupError when the study has no segmentation."""
    from ichdet.data.masks import read_series_masks

    segmentation = summary.get("segmentation")
    if not segmentation:
        raise LookupError("the study was predicted without a segmenter")
    _, _, masks, _ = read_series_masks(result / "masks" / Path(segmentation["file"]).name)
    row = summary["slices"][n].get("mask_row")
    return masks[row] if row is not None else np.zeros_like(masks[0])
