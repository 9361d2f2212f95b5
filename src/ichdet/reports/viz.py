"""Figures of single slices (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ichdet.data.windows import PRESETS, Window, window_stack  # noqa: E402
from ichdet.dicom.read import Slice  # noqa: E402
from ichdet.util.atomic import atomic_path  # noqa: E402


def composite_rgb(stack: np.ndarray) -> np.ndarray:
    """First three channels of a C x H x W [0, 1] stack as an H x W x 3 image (fewer: repeated)."""
    channels = [stack[min(i, stack.shape[0] - 1)] for i in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def save_figure(fig: plt.Figure, out: str | os.PathLike, dpi: int = 100) -> Path:
    """Save atomically as PNG and close the figure."""
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Path(out)


def slice_panels(
    sl: Slice,
    out: str | os.PathLike,
    windows: Sequence[Window] = (PRESETS["brain"], PRESETS["subdural"], PRESETS["bone"]),
    title: str | None = None,
) -> Path:
    """The write-up's panels: raw stored values, HU, each window, and the composite of windows."""
    stack = window_stack(sl.hu, windows)
    panels: list[tuple[str, np.ndarray, dict]] = [
        (f"stored values [{sl.stored.min()}, {sl.stored.max()}]", sl.stored, {"cmap": "gray"}),
        (f"HU [{sl.hu.min():.0f}, {sl.hu.max():.0f}]", sl.hu, {"cmap": "gray"}),
    ]
    panels += [
        (f"{w.name} {w.center:g}/{w.width:g}", s, {"cmap": "gray", "vmin": 0, "vmax": 1})
        for w, s in zip(windows, stack, strict=True)
    ]
    panels.append(
        ("composite (" + "/".join(w.name for w in windows[:3]) + ")", composite_rgb(stack), {})
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (label, img, kw) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(img, **kw)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle(title or sl.meta.sop_instance_uid, fontsize=10)
    return save_figure(fig, out)
