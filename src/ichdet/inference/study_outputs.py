"""The study and series tables of a prediction: probabilities per study (or "not assessable"
with the reason, never a probability), and every series with why it was or was not read."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ichdet.labels import LABELS
from ichdet.selection.choose import ASSESSED, NOT_ASSESSABLE, ReadPlan
from ichdet.selection.series_facts import FACT_COLUMNS

#: series.csv: ids, whether read and why (not), then what selection found (facts, then the
#: image check's measures, ``image_*``), then the read series' probabilities.
SERIES_COLUMNS = [
    *FACT_COLUMNS[:4],
    "read",
    "reason",
    *(c for c in FACT_COLUMNS[4:] if c != "problems"),
    "slab_slices",
]


def study_table(
    slices: pd.DataFrame, thresholds: dict[str, float], study_probs: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per study: per label its probability (the study head's when the run has a series
    stage, else the maximum over slices), the slice with the highest slice probability, flag."""
    rows = []
    for study_id, group in slices.groupby("study_id", sort=False):
        row: dict = {"study_id": study_id, "slices": len(group)}
        for name in LABELS:
            top = group[name].idxmax()
            value = group.at[top, name] if study_probs is None else study_probs.at[study_id, name]
            row[name] = float(value)
            row[f"{name}_slice"] = group.at[top, "image_id"]
            row[f"{name}_flag"] = bool(row[name] >= thresholds.get(name, 0.5))
        rows.append(row)
    columns = ["study_id", "slices"]
    columns += [f"{n}{suffix}" for n in LABELS for suffix in ("", "_slice", "_flag")]
    return pd.DataFrame(rows, columns=columns)


def with_status(studies: pd.DataFrame, plan: ReadPlan) -> pd.DataFrame:
    """Every study of the plan, in its order: ``status`` "assessed" with the probabilities, or
    "not assessable" with the ``reason`` and empty probabilities and flags; ``series_read``
    and quality ``notes`` for both. A study whose read series gave no slice (all unreadable)
    is not assessable too."""
    status = plan.studies.set_index("study_id")
    table = status.join(studies.set_index("study_id"), how="left").reset_index()
    missing = table["slices"].isna() & (table["status"] == ASSESSED)
    table.loc[missing, "status"] = NOT_ASSESSABLE
    table.loc[missing, "reason"] = "no slice of the series read could be decoded"
    table["slices"] = table["slices"].fillna(0).astype(int)
    for name in LABELS:
        flag = table[f"{name}_flag"].astype(object)
        table[f"{name}_flag"] = flag.where(table["status"] == ASSESSED, None)
        table[f"{name}_slice"] = table[f"{name}_slice"].fillna("")
    order = ["study_id", "status", "reason", "slices"]
    rest = [c for c in table.columns if c not in order and c not in ("series_read", "notes")]
    return table[[*order, *rest, "series_read", "notes"]]


#: studies.csv's header columns: what a validation joins the truth on (patient id, accession)
#: and groups by (manufacturer, kernel and slice thickness of the series read).
HEADER_COLUMNS = ["patient_id", "accession", "study_date", "manufacturer", "kernel", "thickness"]


def study_headers(studies: pd.DataFrame, inputs: pd.DataFrame, read: pd.DataFrame) -> pd.DataFrame:
    """``HEADER_COLUMNS`` per study of ``studies`` (in its order): identity from any of the
    study's images (``inputs``), kernel and thickness from the series read (``read``; the
    median thickness, "" when not assessed)."""
    ids = studies["study_id"]
    out = pd.DataFrame(index=ids)
    given = inputs.groupby("study_id", sort=False).first() if len(inputs) else pd.DataFrame()
    for column in HEADER_COLUMNS[:4]:
        values = given[column] if column in given else pd.Series(dtype=object)
        out[column] = ids.map(values).fillna("").astype(str).to_numpy()
    by_study = read.groupby("study_id", sort=False) if len(read) else None
    kernel = by_study["kernel"].first() if by_study is not None and "kernel" in read else {}
    thickness = (
        by_study["thickness"].median() if by_study is not None and "thickness" in read else {}
    )
    out["kernel"] = ids.map(kernel).fillna("").astype(str).to_numpy()
    out["thickness"] = pd.to_numeric(ids.map(thickness), errors="coerce").to_numpy()
    return out.reset_index(drop=True)


def is_assessed(studies: pd.DataFrame) -> pd.Series:
    """Which rows of a studies table hold probabilities (older tables have no status)."""
    if "status" not in studies:
        return pd.Series(True, index=studies.index)
    return studies["status"].fillna(ASSESSED) == ASSESSED


def flagged(studies: pd.DataFrame, label: str = "any") -> pd.Series:
    """The flag of ``label`` per study; False where the study was not assessed."""
    return studies[f"{label}_flag"].map(lambda v: v is True or v == "True" or v == 1) & (
        is_assessed(studies)
    )


def series_table(
    plan: ReadPlan, slices: pd.DataFrame, series_probs: pd.DataFrame | None
) -> pd.DataFrame:
    """``SERIES_COLUMNS`` plus, for the series read, their probabilities (the series stage's
    head, else the maximum over their slices)."""
    measures = [c for c in plan.series.columns if c.startswith("image_") and c != "image_type"]
    table = plan.series.reindex(columns=[*SERIES_COLUMNS, *measures]).copy()
    table["read"] = table["read"].astype(bool)
    if series_probs is not None and len(series_probs):
        probs = series_probs.groupby(["study_id", "series_id"], sort=False)[list(LABELS)].max()
    elif len(slices):
        probs = slices.groupby(["study_id", "series_id"], sort=False)[list(LABELS)].max()
    else:
        probs = pd.DataFrame(columns=list(LABELS))
    joined = table.join(probs, on=["study_id", "series_id"]) if len(probs) else table
    for name in LABELS:
        if name not in joined:
            joined[name] = np.nan
    return joined


def read_rows(slices: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """The read rows of a finished prediction, from its slices.csv and an index of its files:
    the rows read, with slabs rebuilt from ``slab_ids``."""
    sources = dict(zip(index["image_id"], index["source"], strict=True))
    rows = index.set_index("image_id").loc[slices["image_id"]].reset_index()
    rows["z"] = slices["z"].to_numpy()
    ids = slices["slab_ids"].fillna("") if "slab_ids" in slices else pd.Series("", slices.index)
    rows["slab_ids"] = ids.to_numpy()
    rows["slab_sources"] = [json.dumps([sources[i] for i in s.split()]) if s else "" for s in ids]
    rows["kind"] = np.where(rows["slab_sources"] != "", "slab", rows.get("kind", "dicom"))
    return rows
