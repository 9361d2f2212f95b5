"""Thin series read as slabs of the thickness the model was trained on.

A model trained on RSNA's 5 mm slices meets 0.625 mm series in most real archives. A slab is
the mean HU of ``m`` consecutive thin slices, ``m = round(slab / spacing)``, where the spacing is
the median step between the slices' positions (never the SliceThickness tag: CQ500's tag says
0.625 mm on slices 4.7 mm apart). The slab's position is the mean of its slices' positions; it
is named by its middle slice (a real instance, so key slices and SR references stay valid) and
lists the slices it covers. A last group shorter than half a slab joins the one before it.

``--slab off`` reads every slice; ``auto`` makes slabs of the model's training spacing when the
series is thinner than 0.6 of it; a number makes slabs of that many mm.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

#: ``auto`` reads a series as slabs when its spacing is below this share of the training one.
AUTO_BELOW = 0.6
SLAB_KIND = "slab"


def parse_slab(value: str) -> float | str:
    """``off`` | ``auto`` | a thickness in mm (> 0)."""
    text = str(value).strip().lower()
    if text in ("off", "auto"):
        return text
    try:
        mm = float(text.removesuffix("mm"))
    except ValueError:
        raise ValueError(f"--slab takes off, auto or a thickness in mm, not {value!r}") from None
    if not math.isfinite(mm) or mm <= 0:
        raise ValueError(f"--slab thickness must be > 0 mm, not {value!r}")
    return mm


def slab_size(spacing: float, mode: float | str, training_mm: float) -> int:
    """How many slices of ``spacing`` mm make one slab (1: read slice by slice)."""
    if mode == "off" or not spacing or not math.isfinite(spacing):
        return 1
    if mode == "auto":
        if spacing >= AUTO_BELOW * training_mm:
            return 1
        target = training_mm
    else:
        target = float(mode)
    return max(1, int(round(target / spacing)))


def _groups(count: int, size: int) -> list[range]:
    starts = list(range(0, count, size))
    groups = [range(s, min(count, s + size)) for s in starts]
    if len(groups) > 1 and len(groups[-1]) < size / 2:
        last = groups.pop()
        groups[-1] = range(groups[-1].start, last.stop)
    return groups


def make_slabs(series: pd.DataFrame, size: int) -> pd.DataFrame:
    """A series' index rows (z order) -> its read rows: one per slab of ``size`` slices.

    Columns kept from the middle slice; ``z`` the slab's mean position; ``kind`` "slab" with
    ``slab_sources`` (JSON list of the slices' sources, in z order) and ``slab_ids`` (their
    image ids joined by spaces) when a slab holds more than one slice.
    """
    series = series.reset_index(drop=True)
    if size <= 1:
        return series.assign(slab_ids="", slab_sources="", slab_slices=1)
    rows = []
    for group in _groups(len(series), size):
        part = series.iloc[list(group)]
        row = part.iloc[len(part) // 2].to_dict()
        if len(part) > 1:
            row["z"] = float(np.nanmean(part["z"].to_numpy(dtype=float)))
            row["kind"] = SLAB_KIND
        row["slab_ids"] = " ".join(part["image_id"]) if len(part) > 1 else ""
        row["slab_sources"] = json.dumps(list(part["source"])) if len(part) > 1 else ""
        row["slab_slices"] = len(part)
        rows.append(row)
    return pd.DataFrame(rows)
