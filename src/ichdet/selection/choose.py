"""Series selection: per study, which series the model reads, why the others are not read, and
whether the study can be assessed at all. Runs on the index (headers) before any pixel is
decoded for prediction; only the image check looks at three slices of a candidate.

The order of preference among the series that may be read (no problem in their headers, and
the image check agrees: a head in a soft-tissue reconstruction):

1. no contrast (tags or description say none) before unknown;
2. a soft-tissue kernel named in the header before an unknown one (judged by the image);
3. original images before derived ones, and those before reformats;
4. the spacing between slices nearest the model's training spacing (5 mm for RSNA);
5. more coverage along z; then the lower series number.

``series="best"`` reads the first; ``"all"`` reads every one that may be read (each reported in
series.csv); ``"off"`` reads every image series as it is (the Kaggle test set, where each image
needs a prediction). A study without a series to read is "not assessable", with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ichdet.dicom.read import DicomError
from ichdet.selection.image_check import ImageVerdict, check_series
from ichdet.selection.series_facts import FACT_COLUMNS, series_records
from ichdet.selection.slabs import make_slabs, slab_size

SERIES_MODES = ("best", "all", "off")
ASSESSED, NOT_ASSESSABLE = "assessed", "not assessable"
DEFAULT_TRAINING_MM = 5.0  #: RSNA's slices
_TYPE_RANK = {"original": 0, "unknown": 0, "derived": 1, "reformat": 2}


@dataclass(frozen=True)
class SelectionOptions:
    series: str = "best"  #: best | all | off
    slab: float | str = "auto"  #: off | auto | mm
    training_mm: float | None = None  #: the model's training slice spacing (None: 5 mm)
    image_check: bool = True

    def __post_init__(self) -> None:
        if self.series not in SERIES_MODES:
            raise ValueError(f"--series takes {', '.join(SERIES_MODES)}, not {self.series!r}")


@dataclass
class ReadPlan:
    """What to read: ``rows`` (index rows, thin series merged into slabs) for the model,
    ``series`` (every series: facts, ``read``, ``reason``, image measures) and ``studies``
    (``status``, ``reason``, ``notes``, the series read)."""

    rows: pd.DataFrame
    series: pd.DataFrame
    studies: pd.DataFrame
    #: HU images of the series read that the image check decoded, by source (not decoded again)
    decoded: dict[str, np.ndarray] = field(default_factory=dict)


def preference(f: dict, training_mm: float) -> tuple:
    """Sort key of a readable series (see the module docstring): smaller is better."""
    spacing = f["spacing_mm"] if math.isfinite(f["spacing_mm"] or math.nan) else f["thickness_mm"]
    distance = abs(spacing - training_mm) if math.isfinite(spacing or math.nan) else 99.0
    number = f["series_number"] if pd.notna(f["series_number"]) else math.inf
    return (
        0 if f["contrast"] == "none" else 1,
        0 if f["kernel_class"] == "soft" else 1,
        _TYPE_RANK.get(str(f["image_type"]), 1),
        round(distance, 2),
        -(f["coverage_mm"] or 0.0),
        number,
        str(f["series_id"]),
    )


def series_label(f: dict | pd.Series) -> str:
    """How a person names a series: its number and description (no UID)."""
    number = f"#{int(f['series_number'])}" if pd.notna(f["series_number"]) else "series"
    description = str(f["description"] or "").strip()
    return f"{number} {description}".strip() if description else number


Checker = Callable[[list[str]], ImageVerdict]


def _image_problems(rows: pd.DataFrame, checker: Checker | None, f: dict) -> list[str]:
    """Run the image check on a candidate series; record its measures and notes."""
    if checker is None or (rows["kind"] != "dicom").any():
        return []
    try:
        verdict = checker(list(rows["source"]))
    except DicomError as exc:
        return [f"unreadable slices ({exc.reason})"]
    f.update(verdict.to_dict())
    f["image_notes"] = "; ".join(verdict.notes())
    f["_images"] = verdict.images
    found = verdict.problems()
    if f["kernel_class"] == "soft":  # a named soft kernel outranks the image's noise
        found = [p for p in found if not p.startswith("bone kernel")]
    return found


def _by_study(records: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for f in records:
        grouped.setdefault(f["study_id"], []).append(f)
    return grouped


def _choose(
    records: list[dict],
    index: pd.DataFrame,
    options: SelectionOptions,
    checker: Checker | None,
    training: float,
) -> None:
    """Fill in ``read`` and ``reason`` (and the image measures) of every series record."""
    for f in records:
        f.update(read=False, reason=f["problems"])
    positions = index.groupby(["study_id", "series_id"], sort=False).indices
    for series in _by_study(records).values():
        if options.series == "off":
            candidates = [f for f in series if f["slices"] > 0]
        else:
            candidates = [f for f in series if not f["problems"]]
        chosen = None
        for f in sorted(candidates, key=lambda f: preference(f, training)):
            if chosen is not None and options.series == "best":
                f["reason"] = f"may be read; {series_label(chosen)} preferred"
                continue
            rows = index.iloc[positions[(f["study_id"], f["series_id"])]]
            found = [] if options.series == "off" else _image_problems(rows, checker, f)
            if found:
                f["reason"] = "; ".join(found)
                continue
            f.update(read=True, reason="read")
            chosen = chosen or f


def _study_reason(series: list[dict]) -> str:
    """Why a study cannot be read, in a line: the one kind of series it has, or the kinds.
    Objects that are no image (dose reports) and localizers beside other series say nothing."""
    images = [f for f in series if f["slices"] > 0]
    if not images:
        return "no CT image series"
    others = [f for f in images if f["image_type"] != "localizer"]
    kinds = []
    for f in others or images:
        for problem in str(f["reason"]).split("; "):
            kind = problem.split(" (")[0].removesuffix(" on the image")
            if kind and kind not in kinds:
                kinds.append(kind)
    single = {
        "localizer": "only a localizer",
        "bone kernel": "only bone-kernel series",
        "post-contrast": "only post-contrast series",
        "not a head": "not a head CT",
    }
    if len(kinds) == 1 and kinds[0] in single:
        return single[kinds[0]]
    return "no series to read: " + "; ".join(kinds)


def _study(series: list[dict]) -> dict:
    """A study's status, reason, the series read and the quality notes of what was read."""
    read = [f for f in series if f["read"]]
    notes = [
        n
        for f in read
        for part in (f["notes"], f.get("image_notes", ""))
        for n in str(part).split("; ")
    ]
    for f in read:
        if f["slab_slices"] > 1:
            mm = f["slab_slices"] * f["spacing_mm"]
            notes.append(
                f"{series_label(f)} read as {mm:.1f} mm slabs ({f['slab_slices']} slices each)"
            )
    return {
        "study_id": series[0]["study_id"],
        "status": ASSESSED if read else NOT_ASSESSABLE,
        "reason": "" if read else _study_reason(series),
        "series_read": "; ".join(series_label(f) for f in read),
        "notes": "; ".join(dict.fromkeys(n for n in notes if n)),
    }


def plan_reads(
    index: pd.DataFrame,
    others: list[dict] | None = None,
    options: SelectionOptions | None = None,
    checker: Checker | None = check_series,
) -> ReadPlan:
    """Classify every series of ``index``, choose what to read, and make thin series slabs."""
    options = options or SelectionOptions()
    training = options.training_mm or DEFAULT_TRAINING_MM
    if "kind" not in index:
        index = index.assign(kind="dicom")
    records = series_records(index, others)
    _choose(records, index, options, checker if options.image_check else None, training)
    for f in records:
        f["slab_slices"] = slab_size(f["spacing_mm"], options.slab, training) if f["read"] else 1
    positions = index.groupby(["study_id", "series_id"], sort=False).indices
    parts = [
        make_slabs(index.iloc[positions[(f["study_id"], f["series_id"])]], f["slab_slices"])
        for f in records
        if f["read"]
    ]
    rows = pd.concat(parts, ignore_index=True) if parts else index.iloc[:0].copy()
    studies = pd.DataFrame(
        [_study(group) for group in _by_study(records).values()],
        columns=["study_id", "status", "reason", "series_read", "notes"],
    )
    decoded = {s: hu for f in records if f["read"] for s, hu in f.get("_images", {}).items()}
    series = pd.DataFrame([{k: v for k, v in f.items() if k != "_images"} for f in records])
    series = series.reindex(columns=[*FACT_COLUMNS, *(c for c in series if c not in FACT_COLUMNS)])
    return ReadPlan(rows, series, studies, decoded)
