"""Study-level labels (one row per study, e.g. radiologists' reads such as CQ500's) joined onto
the index as ``study_<label>`` columns.

The file is a CSV with a ``study_id`` column (the StudyInstanceUID, as the index holds it) or a
``patient_id`` column, and one or more of the six label columns (0/1; empty = unknown). ``any``
is derived from the five subtypes when they are all given. The sequence stage learns its study
head from these (multiple-instance learning: the slices of such a study get no slice loss).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ichdet.labels import LABELS, STUDY_LABELS, SUBTYPES

KEYS = ("study_id", "patient_id")


def read_study_labels(path: str | os.PathLike) -> pd.DataFrame:
    """The CSV -> a table indexed by its key column (``study_id`` or ``patient_id``) with the
    label columns it gives (float; NaN = unknown)."""
    df = pd.read_csv(path, dtype={k: str for k in KEYS})
    key = next((k for k in KEYS if k in df.columns), None)
    if key is None:
        raise ValueError(f"{path}: needs a column study_id (or patient_id)")
    given = [name for name in LABELS if name in df.columns]
    if not given:
        raise ValueError(f"{path}: no label columns (any of {', '.join(LABELS)})")
    table = df.drop_duplicates(key).set_index(key)[given].apply(pd.to_numeric, errors="coerce")
    bad = table.notna() & ~table.isin([0, 1])
    if bad.any().any():
        raise ValueError(f"{path}: labels must be 0, 1 or empty ({int(bad.sum().sum())} are not)")
    if "any" not in table and all(n in table for n in SUBTYPES):
        table["any"] = table[list(SUBTYPES)].max(axis=1, skipna=False)
    return table.astype(float)


def join_study_labels(df: pd.DataFrame, table: pd.DataFrame | None, report: dict) -> pd.Series:
    """``study_<label>`` columns on ``df`` (NaN where unknown); returns which rows got any."""
    for column in STUDY_LABELS:
        df[column] = np.nan
    if table is None:
        return pd.Series(False, index=df.index)
    key = table.index.name
    joined = df[[key]].astype(str).join(table, on=key)
    for name in table.columns:
        df[f"study_{name}"] = joined[name].to_numpy(dtype=float)
    labelled = df[list(STUDY_LABELS)].notna().any(axis=1)
    report["study_labels"] = {
        "key": key,
        "studies": int(df.loc[labelled, "study_id"].nunique()),
        "rows_without_study": int((~table.index.isin(df[key].astype(str))).sum()),
    }
    return labelled


def study_truth(index: pd.DataFrame) -> pd.DataFrame:
    """Per study: its given study labels, else what its slice labels say (1 if a slice is
    positive, 0 if every slice is known negative, NaN otherwise). Indexed by study_id."""
    rows = index.groupby("study_id", sort=False)
    slices = rows[list(LABELS)]
    positive = slices.max()
    all_known = rows[list(LABELS)].apply(lambda g: g.notna().all())
    from_slices = positive.where((positive == 1) | all_known)
    if not set(STUDY_LABELS) <= set(index.columns):
        return from_slices.astype(float)
    given = rows[list(STUDY_LABELS)].first()
    given.columns = list(LABELS)
    return given.where(given.notna(), from_slices).astype(float)
