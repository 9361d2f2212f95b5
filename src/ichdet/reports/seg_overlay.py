"""The segmentation drawn for people: colour per subtype with its outline over a windowed slice,
for the HTML report (its "Segmentation" section) and the web viewer's overlay."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ichdet.data.masks import read_series_masks, segmented_file, upscale_masks
from ichdet.data.windows import PRESETS, apply_window
from ichdet.dicom.read import read_hu
from ichdet.dicom.sources import read_source
from ichdet.labels import SUBTYPES

#: RGB colour of each subtype (the SEG's display colours, roughly).
COLOURS: dict[str, tuple[int, int, int]] = {
    "epidural": (230, 120, 40),
    "intraparenchymal": (220, 40, 60),
    "intraventricular": (60, 200, 90),
    "subarachnoid": (240, 220, 40),
    "subdural": (60, 140, 240),
}


def mask_overlay(gray: np.ndarray, masks: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """A windowed slice (float H x W in [0, 1]) with masks (5 x h x w bool, any size) blended
    in their colours and outlined: RGB uint8 H x W x 3."""
    rows, columns = gray.shape
    image = np.repeat((np.clip(gray, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    for k, name in enumerate(SUBTYPES):
        if not masks[k].any():
            continue
        inside = upscale_masks(masks[k], (rows, columns))
        plane = inside.astype(np.uint8)
        colour = np.array(COLOURS[name], np.float32)
        image[inside] = ((1 - alpha) * image[inside] + alpha * colour).astype(np.uint8)
        contours, _ = cv2.findContours(plane, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(image, contours, -1, tuple(int(c) for c in colour), 1)
    return image


def study_masks(summary: Any, masks_folder: Path) -> tuple[list[str], np.ndarray] | None:
    """(image ids in z order, masks) of the series a study row was measured on, if any."""
    path = segmented_file(summary, masks_folder)
    if path is None:
        return None
    ids, _, masks, _ = read_series_masks(path)
    return ids, masks


def _png(image: np.ndarray) -> str:
    import base64

    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode() if ok else ""


def segmentation_section(
    summary: Any, masks_folder: Path, sources: dict[str, str], shown: int = 3
) -> str:
    """The report's section: volume and thickness per subtype, and the ``shown`` slices with
    the most blood, with the masks drawn over the brain window. "" without a segmentation."""
    found = study_masks(summary, masks_folder)
    if found is None:
        return ""
    ids, masks = found
    rows = "".join(
        f"<tr><td>{name}</td><td>{float(summary.get(f'volume_ml_{name}', 0)):.2f}</td>"
        f"<td>{_thickness(summary, name)}</td></tr>"
        for name in (*SUBTYPES, "any")
    )
    area = masks.reshape(len(masks), -1).sum(axis=1)
    figures = []
    brain = PRESETS["brain"]
    for n in [int(i) for i in np.argsort(-area, kind="stable")[:shown] if area[i] > 0]:
        gray = apply_window(read_hu(read_source(sources[ids[n]])), brain.center, brain.width)
        caption = html.escape(f"slice {n + 1} of {len(ids)} ({ids[n]})")
        figures.append(
            f"<figure><img src='{_png(mask_overlay(gray, masks[n]))}' width='256' "
            f"alt='{caption}'><figcaption>{caption}</figcaption></figure>"
        )
    legend = " ".join(f"<span style='color:rgb{COLOURS[n]}'>&#9632; {n}</span>" for n in SUBTYPES)
    return (
        "<section id='segmentation'><h2>Segmentation: how much and where</h2>"
        "<table><tr><th>subtype</th><th>volume (mL)</th><th>max thickness (mm)</th></tr>"
        f"{rows}</table><p>{legend}</p><div class='panels'>{''.join(figures)}</div>"
        "<p class='note'>Volumes from the segmenter's masks and the slice positions; "
        "thickness: the widest point of a collection on an axial slice.</p></section>"
    )


def _thickness(summary: Any, name: str) -> str:
    value = summary.get(f"thickness_mm_{name}") if hasattr(summary, "get") else None
    return "-" if value is None or value != value else f"{float(value):.1f}"
