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
from dataclasses import dataclass, replace

import pandas as pd

from ichdet.dicom.read import DicomError
from ichdet.selection.image_check import ImageVerdict, check_series
from ichdet.selection.series_facts import describe_series
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


def preference(f: pd.Series, training_mm: float) -> tuple:
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


def series_label(f: pd.Series) -> str:
    """How a person names a series: its number and description (no UID)."""
    number = f"#{int(f['series_number'])}" if pd.notna(f["series_number"]) else "series"
    description = str(f["description"] or "").strip()
    return f"{number} {description}".strip() if description else number


Checker = Callable[[list[str]], ImageVerdict]


def _image_problems(
    rows: pd.DataFrame, checker: Checker | None, f: pd.Series, record: dict
) -> list[str]:
    """Run the image check on a candidate series; record its measures and notes."""
    if checker is None or (rows["kind"] != "dicom").any():
        return []
    try:
        verdict = checker(list(rows["source"]))
    except DicomError as exc:
        return [f"unreadable slices ({exc.reason})"]
    record.update(verdict.to_dict())
    record["image_notes"] = "; ".join(verdict.notes())
    found = verdict.problems()
    if f["kernel_class"] == "soft":  # a named soft kernel outranks the image's noise
        found = [p for p in found if not p.startswith("bone kernel")]
    return found


def _choose(
    facts: pd.DataFrame, index: pd.DataFrame, options: SelectionOptions, checker: Checker | None
) -> pd.DataFrame:
    """``facts`` with ``read`` and ``reason`` (and image measures) filled in, study by study."""
    records = {i: {"read": False, "reason": facts.at[i, "problems"]} for i in facts.index}
    by_series = dict(tuple(index.groupby(["study_id", "series_id"], sort=False)))
    for _, study in facts.groupby("study_id", sort=False):
        candidates = [i for i in study.index if not facts.at[i, "problems"]]
        if options.series == "off":
            candidates = [i for i in study.index if facts.at[i, "slices"] > 0]
        training = options.training_mm or DEFAULT_TRAINING_MM
        ranked = sorted(candidates, key=lambda i: preference(facts.loc[i], training))
        chosen = None
        for i in ranked:
            f, record = facts.loc[i], records[i]
            if chosen is not None and options.series == "best":
                record["reason"] = f"may be read; {series_label(facts.loc[chosen])} preferred"
                continue
            rows = by_series[(f["study_id"], f["series_id"])]
            found = [] if options.series == "off" else _image_problems(rows, checker, f, record)
            if found:
                record["reason"] = "; ".join(found)
                continue
            record.update(read=True, reason="read")
            chosen = chosen if chosen is not None else i
    extra = pd.DataFrame.from_dict(records, orient="index")
    return facts.join(extra)


def _study_reason(series: pd.DataFrame) -> str:
    """Why a study cannot be read, in a line: the one kind of series it has, or the kinds.
    Objects that are no image (dose reports) and localizers beside other series say nothing."""
    images = series[series["slices"] > 0]
    if not len(images):
        return "no CT image series"
    others = images[images["image_type"] != "localizer"]
    kinds = []
    for reason in (others if len(others) else images)["reason"]:
        for problem in str(reason).split("; "):
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


def _studies(series: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for study_id, group in series.groupby("study_id", sort=False):
        read = group[group["read"]]
        notes = [n for part in read["notes"] for n in str(part).split("; ") if n]
        notes += [n for part in read.get("image_notes", []) for n in str(part).split("; ") if n]
        rows.append(
            {
                "study_id": study_id,
                "status": ASSESSED if len(read) else NOT_ASSESSABLE,
                "reason": "" if len(read) else _study_reason(group),
                "series_read": "; ".join(series_label(f) for _, f in read.iterrows()),
                "notes": "; ".join(dict.fromkeys(n for n in notes if n != "nan")),
            }
        )
    return pd.DataFrame(rows, columns=["study_id", "status", "reason", "series_read", "notes"])


def plan_reads(
    index: pd.DataFrame,
    others: list[dict] | None = None,
    options: SelectionOptions | None = None,
    checker: Checker | None = check_series,
) -> ReadPlan:
    """Classify every series of ``index``, choose what to read, and make thin series slabs."""
    options = options or SelectionOptions()
    if options.training_mm is None:
        options = replace(options, training_mm=DEFAULT_TRAINING_MM)
    if "kind" not in index:
        index = index.assign(kind="dicom")
    facts = describe_series(index, others)
    series = _choose(facts, index, options, checker if options.image_check else None)
    series["slab_slices"] = [
        slab_size(s, options.slab, options.training_mm or DEFAULT_TRAINING_MM) if read else 1
        for s, read in zip(series["spacing_mm"], series["read"], strict=True)
    ]
    parts = []
    for (study, series_id), rows in index.groupby(["study_id", "series_id"], sort=False):
        match = series[(series["study_id"] == study) & (series["series_id"] == series_id)]
        if len(match) and bool(match["read"].iloc[0]):
            parts.append(make_slabs(rows, int(match["slab_slices"].iloc[0])))
    rows = pd.concat(parts, ignore_index=True) if parts else index.iloc[:0].copy()
    studies = _studies(series)
    slabbed = series[series["read"] & (series["slab_slices"] > 1)]
    for _, f in slabbed.iterrows():
        note = f"{series_label(f)} read as slabs of {f['slab_slices']} slices"
        at = studies["study_id"] == f["study_id"]
        studies.loc[at, "notes"] = [f"{n}; {note}" if n else note for n in studies.loc[at, "notes"]]
    return ReadPlan(rows, series, studies)
