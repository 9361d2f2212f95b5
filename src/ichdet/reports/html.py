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
from ichdet.dicom.read import read_hu  # noqa: E402
from ichdet.dicom.sources import read_source  # noqa: E402
from ichdet.labels import LABELS  # noqa: E402
from ichdet.reports.heatmaps import HeatMapper, overlay  # noqa: E402
from ichdet.selection.choose import series_label  # noqa: E402
from ichdet.util.atomic import write_text  # noqa: E402

DISPLAY = 256  # pixels per panel in the report


def _png(img: np.ndarray) -> str:
    """uint8 (H x W or H x W x 3 RGB) -> data URI."""
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


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


def _summary_rows(summary: pd.Series, thresholds: dict[str, float]) -> str:
    esc = html.escape
    return "".join(
        f"<tr class='{'flag' if summary[f'{n}_flag'] else ''}'><td>{n}</td>"
        f"<td>{summary[n]:.3f}</td><td>{thresholds.get(n, 0.5):.3f}</td>"
        f"<td>{'FLAG' if summary[f'{n}_flag'] else '-'}</td>"
        f"<td>{esc(str(summary[f'{n}_slice']))}</td></tr>"
        for n in LABELS
    )


def _panels(
    source: str, model_input: np.ndarray | None, label: int, heatmapper: HeatMapper | None
) -> list[tuple[str, str]]:
    """(caption, data URI) of a slice in each window, plus the label's heat map."""
    windows = [PRESETS[w] for w in DEFAULT_WINDOWS]
    try:
        hu = read_hu(read_source(source))
        stack = window_stack(resize_image(hu, DISPLAY), windows)
        panels = [
            (f"{w.name} {w.center:g}/{w.width:g}", _png((s * 255).astype(np.uint8)))
            for w, s in zip(windows, stack, strict=True)
        ]
        if heatmapper is not None and model_input is not None:
            cam = heatmapper(model_input, label)
            panels.append((f"heat map ({LABELS[label]})", _png(overlay(stack[0], cam))))
    except (ValueError, OSError) as exc:
        panels = [(f"image unavailable: {exc}", "")]
    return panels


def _label_section(
    name: str,
    study: pd.DataFrame,
    summary: pd.Series,
    panels: list[tuple[str, str]],
    thresholds: dict[str, float],
) -> str:
    esc = html.escape
    image_id = str(summary[f"{name}_slice"])
    z = float(study.loc[study["image_id"] == image_id, "z"].iloc[0])
    figures = "".join(
        f"<figure><img src='{src}' alt='{esc(t)}'><figcaption>{esc(t)}</figcaption></figure>"
        if src
        else f"<p>{esc(t)}</p>"
        for t, src in panels
    )
    flag = "FLAGGED" if summary[f"{name}_flag"] else "not flagged"
    return (
        f"<section id='label-{name}'><h2>{name}: {summary[name]:.3f} ({flag})</h2>"
        f"<p>Top slice {esc(image_id)} at z = {z:.1f} mm.</p>"
        f"<img class='curve' src='{_curve(study, [name], thresholds)}' alt='{name} curve'>"
        f"<div class='panels'>{figures}</div></section>"
    )


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 4px 8px; }
tr.flag { background: #fdd; font-weight: bold; } tr.muted { color: #888; }
.panels { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; } figcaption { font-size: 80%; text-align: center; }
section { border-top: 1px solid #ddd; margin-top: 1.5em; }
.note, .disclaimer { color: #666; font-size: 90%; }
.banner { background: #eef; padding: 4px 8px; }
.warning { background: #fd8; border: 2px solid #c80; padding: 6px 8px; font-weight: bold; }
"""

ONNX_NOTE = (
    "<p class='note'>Heat maps need a PyTorch checkpoint; this report was made with an "
    "ONNX model.</p>"
)


def _heatmap_note(heatmapper: HeatMapper | None, models: int) -> str:
    if heatmapper is None:
        return ONNX_NOTE
    if models > 1:
        return (
            f"<p class='note'>Probabilities are the mean of {models} models; heat maps show "
            "where the first of them looked.</p>"
        )
    return ""


def series_section(summary: pd.Series, series: pd.DataFrame | None) -> str:
    """What was read and why, the others and why not, and the input quality notes."""
    esc = html.escape
    notes = [n for n in str(summary.get("notes") or "").split("; ") if n]
    out = "<h2>Series and input quality</h2>"
    if notes:
        out += "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"
    if series is None or not len(series):
        return out
    rows = "".join(
        f"<tr class='{'' if f['read'] else 'muted'}'>"
        f"<td>{esc(series_label(f))}</td>"
        f"<td>{esc(str(f['slices']))}</td><td>{'read' if f['read'] else '-'}</td>"
        f"<td>{esc(str(f['reason']))}</td></tr>"
        for _, f in series.iterrows()
    )
    return out + (
        f"<table><tr><th>series</th><th>slices</th><th>read</th><th>why</th></tr>{rows}</table>"
    )


def not_assessable_report(
    summary: pd.Series, series: pd.DataFrame | None, out: str | os.PathLike
) -> Path:
    """The page of a study that could not be read: the reason, never a probability."""
    study_id = html.escape(str(summary["study_id"]))
    reason = html.escape(str(summary.get("reason") or ""))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ichdet report {study_id}</title>
<style>{STYLE}</style></head><body>
<p class="banner">Research use only: not for diagnostic use.</p>
<h1>Intracranial hemorrhage: study {study_id}</h1>
<p class='warning'>NOT ASSESSABLE: {reason}. No probability of hemorrhage is given for this
study: it holds no series the model can read (a non-contrast axial head CT in a soft-tissue
reconstruction).</p>
{series_section(summary, series)}
<p class="disclaimer">Research software (ichdet); not a medical device.</p>
</body></html>
"""
    return write_text(out, page)


def study_report(
    study: pd.DataFrame,
    summary: pd.Series,
    sources: dict[str, str],
    inputs: dict[str, np.ndarray],
    thresholds: dict[str, float],
    heatmapper: HeatMapper | None,
    out: str | os.PathLike,
    models: int = 1,
    study_thresholds: dict[str, float] | None = None,
    series_stage: bool = False,
    series: pd.DataFrame | None = None,
    segmentation: str = "",
) -> Path:
    """Write one study's HTML. ``study``: its slices.csv rows in z order; ``inputs``: model
    inputs by image id (for the heat maps); ``sources``: image id -> source; ``thresholds``
    are the slice outputs', ``study_thresholds`` the study outputs' (default: the same).
    A ``warning`` in ``summary`` (a model trained on phantoms only) is shown as a banner;
    ``segmentation`` is the segmentation section's HTML (ichdet.reports.seg_overlay)."""
    study_id = html.escape(str(summary["study_id"]))
    study_thresholds = study_thresholds or thresholds
    how = (
        "Study probability = the series model's study output (it reads every slice in order)"
        if series_stage
        else "Study probability = highest slice probability"
    )
    warning = str(summary.get("warning") or "")
    banner = f"<p class='warning'>WARNING: {html.escape(warning)}</p>" if warning else ""
    sections = []
    for i, name in enumerate(LABELS):
        image_id = str(summary[f"{name}_slice"])
        panels = _panels(sources[image_id], inputs.get(image_id), i, heatmapper)
        sections.append(_label_section(name, study, summary, panels, thresholds))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ichdet report {study_id}</title>
<style>{STYLE}</style></head><body>
<p class="banner">Research use only: not for diagnostic use.</p>{banner}
<h1>Intracranial hemorrhage: study {study_id}</h1>
<p>{len(study)} slices. {how}; a label is flagged when it reaches the model's operating
threshold.</p>
<table><tr><th>label</th><th>probability</th><th>threshold</th><th>flag</th><th>top slice</th>
</tr>{_summary_rows(summary, study_thresholds)}</table>
<h2>Probability along the slices</h2>
<img class='curve' src='{_curve(study, list(LABELS), thresholds)}' alt='all labels'>
{segmentation}{_heatmap_note(heatmapper, models)}{"".join(sections)}
{series_section(summary, series)}
<p class="disclaimer">Research software (ichdet); not a medical device. Findings must be
confirmed by a radiologist.</p>
</body></html>
"""
    return write_text(out, page)
