"""``predict --report``: one self-contained HTML file per study, for a clinician to read.

Each report holds the study summary (probability and flag per label), the probability of each
label along the slices, and one section per label with its top slice in the three windows and a
heat map (LayerCAM, of the Grad-CAM family, from pytorch-grad-cam) of where the model looked for
that label. Images are
embedded as data URIs; the file links to nothing outside itself.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ichdet.data.windows import DEFAULT_WINDOWS, PRESETS, resize_image, window_stack  # noqa: E402
from ichdet.dicom.read import read_slice  # noqa: E402
from ichdet.dicom.sources import read_source  # noqa: E402
from ichdet.labels import LABELS  # noqa: E402
from ichdet.util.atomic import write_text  # noqa: E402

DISPLAY = 256  # pixels per panel in the report


def cam_layer(model, channels: int, size: int, stride: int = 8):
    """The last convolution whose output keeps at least ``size / stride`` pixels per side.

    The network's final convolution sees the image at 1/32 (4 x 4 cells at 128 px): too coarse
    to point at a thin subdural crescent. One stage earlier (1/8) the maps still carry where.
    """
    import torch

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ValueError("heat maps need a convolutional backbone")
    sizes: dict[int, int] = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o: sizes.__setitem__(id(mod), o.shape[-1]))
        for m in convs
    ]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, channels, size, size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    fine = [m for m in convs if sizes.get(id(m), 0) >= size / stride]
    return fine[-1] if fine else convs[-1]


class HeatMapper:
    """LayerCAM heat maps (H x W in [0, 1], input size) for one torch model.

    LayerCAM (pytorch-grad-cam; Jiang et al. 2021) weighs each activation by its own positive
    gradient, which keeps the localisation of a finer layer that plain Grad-CAM's averaged
    weights blur. On the demo model, peaks fell inside the synthetic lesion for 44 % of positive
    slices (Grad-CAM on the last convolution: 0 %; chance: 3 %); see benchmarks/RESULTS.md.
    """

    def __init__(self, model, channels: int, size: int):
        from pytorch_grad_cam import LayerCAM

        self.model = model.eval()
        self.cam = LayerCAM(model=self.model, target_layers=[cam_layer(model, channels, size)])

    def __call__(self, x: np.ndarray, label: int) -> np.ndarray:
        """``x``: one uint8 model input (C x H x W)."""
        import torch
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        device = next(self.model.parameters()).device
        tensor = torch.from_numpy(x[None]).to(device).float().div_(255)
        with torch.enable_grad():
            cams = self.cam(input_tensor=tensor, targets=[ClassifierOutputTarget(label)])
        return np.nan_to_num(cams[0].astype(np.float32))


def heatmap_peak(cam: np.ndarray, shape: tuple[int, int]) -> tuple[int, int]:
    """Row, column of the heat map's maximum, in an image of ``shape``."""
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return (
        min(shape[0] - 1, int((r + 0.5) * shape[0] / cam.shape[0])),
        min(shape[1] - 1, int((c + 0.5) * shape[1] / cam.shape[1])),
    )


def _png(img: np.ndarray) -> str:
    """uint8 (H x W or H x W x 3 RGB) -> data URI."""
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """A [0, 1] grayscale panel with a jet-coloured heat map on top (uint8 RGB)."""
    cam = cv2.resize(cam, gray.shape[::-1], interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.uint8(255 * np.clip(cam, 0, 1)), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    base = np.repeat(gray[..., None], 3, axis=-1)
    return np.uint8(255 * np.clip((1 - alpha) * base + alpha * colour, 0, 1))


def _curve(study: pd.DataFrame, labels: list[str], thresholds: dict[str, float]) -> str:
    fig, ax = plt.subplots(figsize=(7, 2.8 if len(labels) > 1 else 2.0))
    position = np.arange(len(study))
    for name in labels:
        ax.plot(
            position, study[name].to_numpy(), marker=".", label=name, lw=2 if name == "any" else 1
        )
    if len(labels) == 1:
        ax.axhline(thresholds.get(labels[0], 0.5), color="grey", ls="--", lw=1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("slice (bottom -> top, by z)")
    ax.set_ylabel("probability")
    if len(labels) > 1:
        ax.legend(fontsize=7, ncol=3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def study_report(
    study: pd.DataFrame,
    summary: pd.Series,
    sources: dict[str, str],
    inputs: dict[str, np.ndarray],
    thresholds: dict[str, float],
    heatmapper: HeatMapper | None,
    out: str | os.PathLike,
) -> Path:
    """Write one study's HTML. ``study``: its slices.csv rows in z order; ``inputs``: model
    inputs by image id (for Grad-CAM); ``sources``: image id -> source."""
    study_id = str(summary["study_id"])
    windows = [PRESETS[w] for w in DEFAULT_WINDOWS]
    esc = html.escape
    rows = "".join(
        f"<tr class='{'flag' if summary[f'{n}_flag'] else ''}'><td>{n}</td>"
        f"<td>{summary[n]:.3f}</td><td>{thresholds.get(n, 0.5):.3f}</td>"
        f"<td>{'FLAG' if summary[f'{n}_flag'] else '-'}</td>"
        f"<td>{esc(str(summary[f'{n}_slice']))}</td></tr>"
        for n in LABELS
    )
    sections = []
    for i, name in enumerate(LABELS):
        image_id = str(summary[f"{name}_slice"])
        z = float(study.loc[study["image_id"] == image_id, "z"].iloc[0])
        panels = []
        try:
            hu = read_slice(read_source(sources[image_id])).hu
            stack = window_stack(resize_image(hu, DISPLAY), windows)
            panels = [
                (f"{w.name} {w.center:g}/{w.width:g}", _png(np.uint8(s * 255)))
                for w, s in zip(windows, stack, strict=True)
            ]
            if heatmapper is not None and image_id in inputs:
                cam = heatmapper(inputs[image_id], i)
                panels.append((f"heat map ({name})", _png(overlay(stack[0], cam))))
        except (ValueError, OSError) as exc:
            panels = [(f"image unavailable: {esc(str(exc))}", "")]
        figures = "".join(
            f"<figure><img src='{src}' alt='{esc(t)}'><figcaption>{esc(t)}</figcaption></figure>"
            if src
            else f"<p>{t}</p>"
            for t, src in panels
        )
        flag = "FLAGGED" if summary[f"{name}_flag"] else "not flagged"
        sections.append(
            f"<section id='label-{name}'><h2>{name}: {summary[name]:.3f} ({flag})</h2>"
            f"<p>Top slice {esc(image_id)} at z = {z:.1f} mm.</p>"
            f"<img class='curve' src='{_curve(study, [name], thresholds)}' alt='{name} curve'>"
            f"<div class='panels'>{figures}</div></section>"
        )
    note = (
        ""
        if heatmapper is not None
        else (
            "<p class='note'>Heat maps need a PyTorch checkpoint; this report was made with an "
            "ONNX model.</p>"
        )
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ichdet report {esc(study_id)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
tr.flag {{ background: #fdd; font-weight: bold; }}
.panels {{ display: flex; flex-wrap: wrap; gap: 8px; }}
figure {{ margin: 0; }} figcaption {{ font-size: 80%; text-align: center; }}
section {{ border-top: 1px solid #ddd; margin-top: 1.5em; }}
.note, .disclaimer {{ color: #666; font-size: 90%; }}
</style></head><body>
<h1>Intracranial hemorrhage: study {esc(study_id)}</h1>
<p>{len(study)} slices. Study probability = highest slice probability; a label is flagged when it
reaches the model's operating threshold.</p>
<table><tr><th>label</th><th>probability</th><th>threshold</th><th>flag</th><th>top slice</th>
</tr>{rows}</table>
<h2>Probability along the slices</h2>
<img class='curve' src='{_curve(study, list(LABELS), thresholds)}' alt='all labels'>
{note}{"".join(sections)}
<p class="disclaimer">Research software (ichdet); not a medical device. Findings must be
confirmed by a radiologist.</p>
</body></html>
"""
    return write_text(out, page)
