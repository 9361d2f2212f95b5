"""One row per series of the index: its header classification, geometry, what stops it from
being read (``problems``) and what a reader should know (``notes``). Pure: a table in, a table
out; no file is opened here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ichdet.data.index import SERIES_TEXT_COLUMNS
from ichdet.selection.classify import (
    body_part_class,
    contrast_class,
    image_type_class,
    kernel_class,
    localizer_hint,
    orientation_class,
    sop_class,
)

#: A series with fewer slices than this cannot show a head.
MIN_SLICES = 8
#: A head from the skull base to the vertex spans ~120-160 mm; less than this misses much of it.
MIN_COVERAGE_MM = 80.0
#: More than this along z is not a head series (a head-to-pelvis trauma scan).
MAX_COVERAGE_MM = 400.0
#: A jump between neighbouring slices over this leaves brain unseen: not read (smaller gaps are
#: noted; real subsampled series, such as the CQ500 sample, have 15 mm jumps).
MAX_GAP_MM = 20.0
#: Slices that share a position: over this share, the series holds two stacks.
MAX_DUPLICATE_SHARE = 0.2
#: A field of view narrower than this may cut an adult head (~150 x 190 mm).
MIN_FOV_MM = 180.0

FACT_COLUMNS = [
    "study_id",
    "series_id",
    "series_number",
    "description",
    "slices",
    "sop_class",
    "image_type",
    "orientation",
    "tilt_deg",
    "kernel",
    "kernel_class",
    "contrast",
    "contrast_evidence",
    "body_part",
    "thickness_mm",
    "spacing_mm",
    "coverage_mm",
    "max_gap_mm",
    "duplicates",
    "fov_mm",
    "problems",
    "notes",
]


def _first(values: pd.Series) -> str:
    """The first non-empty text of a column (the series' header value)."""
    return next((str(v) for v in values.tolist() if isinstance(v, str) and v), "")


def _geometry(z: np.ndarray) -> dict[str, float | int]:
    """Spacing (median step between distinct positions), coverage, largest gap, duplicates."""
    z = np.sort(z[np.isfinite(z)])
    if len(z) < 2:  # no positions (pre-windowed images, headers without geometry)
        return {"spacing_mm": math.nan, "coverage_mm": math.nan, "max_gap_mm": 0.0, "duplicates": 0}
    steps = np.diff(z)
    distinct = steps[steps > 0.01]
    return {
        "spacing_mm": float(np.median(distinct)) if len(distinct) else 0.0,
        "coverage_mm": float(z[-1] - z[0]),
        "max_gap_mm": float(distinct.max()) if len(distinct) else 0.0,
        "duplicates": int((steps <= 0.01).sum()),
    }


def _image_type(image_type: str, description: str) -> str:
    kind = image_type_class(image_type)
    if kind in ("original", "unknown", "derived") and localizer_hint(description):
        return "localizer"
    return kind


def _facts(group: pd.DataFrame) -> dict:
    """The classification and geometry of one series (its index rows)."""
    text = {c: _first(group[c]) if c in group else "" for c in SERIES_TEXT_COLUMNS}
    orientation, tilt = orientation_class(text["orientation"])
    contrast, evidence = contrast_class(text["contrast"], text["description"])
    thickness = pd.to_numeric(group.get("thickness", pd.Series(dtype=float)), errors="coerce")
    spacing = pd.to_numeric(group.get("pixel_spacing", pd.Series(dtype=float)), errors="coerce")
    columns = pd.to_numeric(group.get("columns", pd.Series(dtype=float)), errors="coerce")
    number = pd.to_numeric(group.get("series_number", pd.Series(dtype=float)), errors="coerce")
    return {
        "series_number": number.dropna().iloc[0] if number.notna().any() else math.nan,
        "description": text["description"],
        "slices": len(group),
        "images": bool(len(group)) and bool((group.get("kind", "dicom") == "image").all()),
        "sop_class": sop_class(text["sop_class_uid"]),
        "image_type": _image_type(text["image_type"], text["description"]),
        "orientation": orientation,
        "tilt_deg": tilt,
        "kernel": text["kernel"],
        "kernel_class": kernel_class(text["kernel"]),
        "contrast": contrast,
        "contrast_evidence": evidence,
        "body_part": body_part_class(text["body_part"]),
        "thickness_mm": float(thickness.median()) if thickness.notna().any() else math.nan,
        "mixed_thickness": int(thickness.dropna().round(2).nunique()) > 1,
        "fov_mm": float((spacing * columns).median()) if spacing.notna().any() else math.nan,
        **_geometry(group["z"].to_numpy(dtype=float)),
    }


def problems(f: dict) -> list[str]:
    """Why a series is not read, from its header facts (empty: it may be read)."""
    found = []
    if f["sop_class"] not in ("ct image", "unknown"):
        found.append(f"not a CT image series ({f['sop_class']})")
    kind = f["image_type"]
    if kind in ("localizer", "projection"):
        found.append("localizer" if kind == "localizer" else "projection image (MIP)")
    if f["orientation"] in ("coronal", "sagittal", "oblique") and kind != "localizer":
        found.append(f"{f['orientation']} slices")
    if f["kernel_class"] == "sharp":
        found.append(f"bone kernel ({f['kernel']})")
    if f["contrast"] == "contrast":
        found.append(f"post-contrast ({f['contrast_evidence']})")
    if f["body_part"] == "other":
        found.append("not a head (body part)")
    if kind != "localizer" and not f["images"]:  # pre-windowed images: nothing to judge
        found += _geometry_problems(f)
    return found


def _geometry_problems(f: dict) -> list[str]:
    found = []
    if f["slices"] < MIN_SLICES:
        found.append(f"too few slices ({f['slices']})")
    elif math.isnan(f["coverage_mm"]):  # no positions: the coverage cannot be known
        pass
    elif f["coverage_mm"] > MAX_COVERAGE_MM:
        found.append(f"not a head ({f['coverage_mm']:.0f} mm along z)")
    elif f["coverage_mm"] < MIN_COVERAGE_MM:
        found.append(f"incomplete coverage ({f['coverage_mm']:.0f} mm)")
    if f["max_gap_mm"] > MAX_GAP_MM:
        found.append(f"z gap of {f['max_gap_mm']:.0f} mm")
    if f["duplicates"] > MAX_DUPLICATE_SHARE * f["slices"]:
        found.append(f"duplicate positions ({f['duplicates']} slices)")
    return found


def notes(f: dict) -> list[str]:
    """What does not stop the read but a reader should know."""
    found = []
    if math.isnan(f["coverage_mm"]) and not f["images"]:
        found.append("no slice positions: slices in instance-number order")
    if f["tilt_deg"] > 2.0:
        found.append(f"gantry tilt {f['tilt_deg']:.0f} deg")
    if f["mixed_thickness"]:
        found.append("mixed slice thickness")
    spacing = f["spacing_mm"]
    if spacing and f["max_gap_mm"] > 1.5 * spacing + 0.5 and f["max_gap_mm"] <= MAX_GAP_MM:
        found.append(f"z gap of {f['max_gap_mm']:.1f} mm (spacing {spacing:.1f} mm)")
    if 0 < f["duplicates"] <= MAX_DUPLICATE_SHARE * f["slices"]:
        found.append(f"{f['duplicates']} duplicate position(s)")
    if f["fov_mm"] < MIN_FOV_MM:
        found.append(f"field of view {f['fov_mm']:.0f} mm")
    if f["image_type"] in ("reformat", "derived"):
        found.append(f"{f['image_type']} images")
    return found


def series_records(index: pd.DataFrame, others: list[dict] | None = None) -> list[dict]:
    """One dict per series (``FACT_COLUMNS``): image series from ``index`` (rows of images),
    then non-image objects (``build_index``'s ``other_objects``: dose reports, captures) as
    series that are never read; each study's series by series number."""
    rows = []
    for (study, series), positions in index.groupby(
        ["study_id", "series_id"], sort=False
    ).indices.items():
        facts = _facts(index.iloc[positions])
        facts.update(study_id=study, series_id=series)
        facts["problems"] = "; ".join(problems(facts))
        facts["notes"] = "; ".join(notes(facts))
        rows.append(facts)
    rows += _other_series(others or [])
    order = {s: k for k, s in enumerate(dict.fromkeys(r["study_id"] for r in rows))}

    def key(r: dict) -> tuple:
        number = r.get("series_number")
        known = number is not None and not (isinstance(number, float) and math.isnan(number))
        return (order[r["study_id"]], not known, number if known else 0, str(r["series_id"]))

    return sorted(rows, key=key)


def _other_series(others: list[dict]) -> list[dict]:
    """Series of objects that are no CT slice: one row each, with what they are."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for item in others:
        grouped.setdefault((item["study_id"], item["series_id"]), []).append(item)
    rows = []
    for (study, series), items in grouped.items():
        first = items[0]
        what = sop_class(str(first.get("sop_class_uid") or ""))
        if what in ("unknown", "other object"):
            what = f"{first.get('modality') or '?'} object"
        rows.append(
            {
                "study_id": study,
                "series_id": series,
                "series_number": first.get("series_number"),
                "description": first.get("description") or "",
                "slices": 0,
                "sop_class": what,
                "problems": f"not a CT image series ({what}: {first['reason']})",
                "notes": "",
            }
        )
    return rows
