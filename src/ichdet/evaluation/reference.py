"""The truth a site validates against, read in the forms it comes in, and joined to predictions.

- **Plain**: one row per study, a key column (``study_id``, ``patient_id`` or ``accession``) and
  label columns (``any``, ``epidural``, ...; 1/0, yes/no, true/false; blank = unknown).
- **Readers (CQ500 layout)**: ``name`` (the PatientID), then ``R1:ICH, R1:IPH, R1:IVH, R1:SDH,
  R1:EDH, R1:SAH, ...`` per reader. The reference standard is the readers' majority
  (``majority``), any reader (``any-reader``) or one reader (``R1``); the readers' own reads are
  kept to set the model beside them.
- **RSNA long form** (``ID,Label`` with ``ID_<image>_<label>``): slice labels; a study is
  positive for a label when any of its slices is (the images are found in the prediction's
  ``slices.csv``).

A reference with the same key twice is an error naming the rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ichdet.labels import LABELS, parse_kaggle_id

#: CQ500's finding columns -> ichdet's labels
CQ500 = {
    "ICH": "any",
    "IPH": "intraparenchymal",
    "IVH": "intraventricular",
    "SAH": "subarachnoid",
    "SDH": "subdural",
    "EDH": "epidural",
}
KEYS = ("study_id", "patient_id", "accession")
_READER = re.compile(r"^(R\d+):(\w+)$")
_YES = {"1", "1.0", "yes", "y", "true", "t", "positive"}
_NO = {"0", "0.0", "no", "n", "false", "f", "negative"}


class ReferenceError(ValueError):
    pass


@dataclass
class Reference:
    """Per study (by ``key``): the truth per label (NaN unknown) and, with several readers,
    each reader's reads (reader -> table of the same shape)."""

    key: str
    truth: pd.DataFrame  # index: key values; columns: LABELS
    readers: dict[str, pd.DataFrame] = field(default_factory=dict)
    standard: str = "as given"


def read_reference(
    path: Path, standard: str = "majority", slices: pd.DataFrame | None = None
) -> Reference:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = list(table.columns)
    if any(_READER.match(c) for c in columns):
        return _readers(table, standard, path)
    if columns[:2] == ["ID", "Label"]:
        return _long_form(table, slices, path)
    key = next((k for k in KEYS if k in columns), None)
    if key is None:
        raise ReferenceError(f"{path}: no key column (one of {', '.join(KEYS)}, or CQ500's name)")
    present = [n for n in LABELS if n in columns]
    if not present:
        raise ReferenceError(f"{path}: no label column ({', '.join(LABELS)})")
    _no_duplicates(table[key], path)
    truth = pd.DataFrame({n: _binary(table[n], path, n) for n in present})
    truth.index = table[key].str.strip()
    return Reference(key, truth.reindex(columns=list(LABELS)))


def _binary(values: pd.Series, path: Path, column: str) -> pd.Series:
    text = values.astype(str).str.strip().str.lower()
    bad = ~(text.isin(_YES | _NO) | (text == ""))
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 2  # the file's line (header is line 1)
        raise ReferenceError(f"{path}: line {row}, {column}: {values.iloc[row - 2]!r} is no 0/1")
    return text.map(lambda v: 1.0 if v in _YES else 0.0 if v in _NO else np.nan)


def _no_duplicates(keys: pd.Series, path: Path) -> None:
    repeated = keys[keys.duplicated(keep=False) & (keys.str.strip() != "")]
    if len(repeated):
        lines = ", ".join(str(i + 2) for i in repeated.index[:10])
        raise ReferenceError(f"{path}: {repeated.iloc[0]!r} and others repeated (lines {lines})")


def _readers(table: pd.DataFrame, standard: str, path: Path) -> Reference:
    if "name" not in table:
        raise ReferenceError(f"{path}: a readers file needs the 'name' column (the PatientID)")
    _no_duplicates(table["name"], path)
    readers: dict[str, pd.DataFrame] = {}
    for column in table.columns:
        found = _READER.match(column)
        if found and found.group(2) in CQ500:
            reader, label = found.group(1), CQ500[found.group(2)]
            reads = readers.setdefault(reader, pd.DataFrame(index=table["name"].str.strip()))
            reads[label] = _binary(table[column], path, column).to_numpy()
    readers = {r: t.reindex(columns=list(LABELS)) for r, t in sorted(readers.items())}
    stack = np.stack([t.to_numpy(dtype=float) for t in readers.values()])  # readers x n x 6
    if standard == "majority":
        known = (~np.isnan(stack)).sum(0)
        votes = np.nansum(stack, axis=0)
        truth = np.where(known > 0, (votes * 2 > known).astype(float), np.nan)
    elif standard == "any-reader":
        truth = np.where(np.isnan(stack).all(0), np.nan, np.nanmax(stack, axis=0))
    elif standard in readers:
        truth = readers[standard].to_numpy(dtype=float)
    else:
        choices = ", ".join(["majority", "any-reader", *readers])
        raise ReferenceError(f"--reference {standard!r}: one of {choices}")
    frame = pd.DataFrame(truth, index=next(iter(readers.values())).index, columns=list(LABELS))
    return Reference("patient_id", frame, readers, standard)


def _long_form(table: pd.DataFrame, slices: pd.DataFrame | None, path: Path) -> Reference:
    if slices is None:
        raise ReferenceError(f"{path}: slice labels need the prediction's slices.csv")
    parsed = [parse_kaggle_id(i) for i in table["ID"]]
    long = pd.DataFrame(
        {
            "image_id": [p[0] for p in parsed],
            "label": [p[1] for p in parsed],
            "y": _binary(table["Label"], path, "Label").to_numpy(),
        }
    )
    twice = long.duplicated(["image_id", "label"], keep=False)
    if twice.any():
        lines = ", ".join(str(i + 2) for i in np.flatnonzero(twice)[:10])
        raise ReferenceError(f"{path}: an image's label is given twice (lines {lines})")
    wide = long.pivot(index="image_id", columns="label", values="y")
    study = slices.set_index("image_id")["study_id"]
    wide = wide[wide.index.isin(study.index)]
    wide["study_id"] = study.loc[wide.index].to_numpy()
    truth = wide.groupby("study_id").max().reindex(columns=list(LABELS))
    return Reference("study_id", truth, standard="any slice positive")


@dataclass
class Joined:
    """Predictions and truth on the studies found on both sides, and those found on one."""

    key: str
    studies: pd.DataFrame  # the prediction rows joined, in truth order
    truth: pd.DataFrame  # same rows
    only_predicted: list[str]
    only_reference: list[str]


def join(studies: pd.DataFrame, reference: Reference) -> Joined:
    """Join on the reference's key; a plain file keyed by ``study_id`` may also match the
    predictions' ``patient_id`` or ``accession`` - the column that matches most is used."""
    candidates = [reference.key] if reference.key != "study_id" else list(KEYS)
    usable = [c for c in candidates if c in studies]
    if not usable:
        raise ReferenceError(f"the predictions have no {reference.key!r} column to join on")
    keys = set(reference.truth.index)
    key = max(usable, key=lambda c: len(keys & set(studies[c].astype(str))))
    values = studies[key].astype(str)
    repeated = values[values.duplicated(keep=False) & (values != "")]
    if len(repeated):
        raise ReferenceError(f"predictions: {key} {repeated.iloc[0]!r} belongs to several studies")
    both = [k for k in reference.truth.index if k in set(values)]
    rows = studies.set_index(values).loc[both].reset_index(drop=True)
    return Joined(
        key,
        rows,
        reference.truth.loc[both].reset_index(drop=True),
        sorted(set(values) - keys),
        sorted(keys - set(values)),
    )
