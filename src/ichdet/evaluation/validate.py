"""``ichdet validate``: the model measured on a site's own studies, reported the way the field
reports external validations (the CQ500 paper; TRIPOD+AI, CLAIM): per label discrimination with
bootstrap CIs, the operating point with Wilson CIs, calibration, the readers beside the model,
subgroups by scanner and protocol, and every failure.

Studies are the unit: the bootstrap resamples studies; a study whose reference cell is unknown
is left out of that label only; a study the model did not assess (no readable series) has no
probability and is counted apart, never as a negative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ichdet.evaluation import validation_stats as vs
from ichdet.evaluation.reference import Joined, Reference, join
from ichdet.labels import LABELS

SUBGROUPS = ("manufacturer", "thickness", "kernel")
THICKNESS_BINS = [(0.0, 1.5, "<= 1.5 mm"), (1.5, 3.0, "1.5-3 mm"), (3.0, 5.5, "3-5 mm")]


@dataclass
class ValidateOptions:
    bootstrap: int = 2000
    seed: int = 0
    target_sensitivity: float = 0.95
    subgroups: tuple[str, ...] = SUBGROUPS
    min_group: int = 20  # smaller subgroups are marked: their figures rest on few studies


def label_arrays(joined: Joined, assessed: np.ndarray, label: str) -> tuple[np.ndarray, ...]:
    """(rows, y, p) of ``label``: the assessed studies whose truth is known."""
    truth = joined.truth[label].to_numpy(dtype=float)
    probs = pd.to_numeric(joined.studies[label], errors="coerce").to_numpy(dtype=float)
    rows = np.flatnonzero(assessed & ~np.isnan(truth) & ~np.isnan(probs))
    return rows, truth[rows].astype(int), probs[rows]


def choose_thresholds(
    joined: Joined, assessed: np.ndarray, source: str, given: dict[str, float], target: float
) -> dict[str, float]:
    """The operating thresholds: ``given`` (the model's, or a file's), or for ``site`` those
    that reach ``target`` sensitivity on these very studies (optimistic: fitted here)."""
    if source != "site":
        return {k: float(given.get(k, 0.5)) for k in LABELS}
    out = {}
    for label in LABELS:
        _, y, p = label_arrays(joined, assessed, label)
        out[label] = vs.threshold_for_sensitivity(y, p, target)
    return out


def label_figures(
    y: np.ndarray, p: np.ndarray, threshold: float, options: ValidateOptions, salt: int
) -> dict[str, Any]:
    draws = vs.bootstrap_indices(len(y), options.bootstrap if len(y) else 0, options.seed + salt)
    value, low, high = vs.auc_ci(y, p, draws)
    out: dict[str, Any] = {
        "studies": int(len(y)),
        "positives": int(np.sum(y)),
        "prevalence": float(np.mean(y)) if len(y) else math.nan,
        "auc": {"value": value, "low": low, "high": high},
        "average_precision": vs.average_precision(y, p),
        "operating_point": vs.confusion(y, p, threshold),
        "sensitivity_at_specificity": {
            str(s): vs.sensitivity_at_specificity(y, p, s) for s in (0.90, 0.95)
        },
        "specificity_at_sensitivity": {
            str(s): vs.specificity_at_sensitivity(y, p, s) for s in (0.90, 0.95)
        },
        "calibration": vs.calibration(y, p),
    }
    return out


def readers_figures(
    reference: Reference, joined: Joined, assessed: np.ndarray, thresholds: dict[str, float]
) -> dict[str, Any]:
    """Each reader against the standard; Fleiss' kappa between readers; Cohen's kappa of the
    model's calls against each reader (per label, on the studies every side has)."""
    if not reference.readers:
        return {}
    keys = joined.studies[joined.key].astype(str).to_numpy()
    out: dict[str, Any] = {"standard": reference.standard, "labels": {}}
    for label in LABELS:
        truth = joined.truth[label].to_numpy(dtype=float)
        reads = {r: t.loc[keys, label].to_numpy(dtype=float) for r, t in reference.readers.items()}
        probs = pd.to_numeric(joined.studies[label], errors="coerce").to_numpy(dtype=float)
        model = (probs >= thresholds[label]).astype(float)
        model[~assessed | np.isnan(probs)] = np.nan
        per: dict[str, Any] = {"readers": {}}
        for reader, r in reads.items():
            ok = ~np.isnan(r) & ~np.isnan(truth)
            yt, yr = truth[ok] == 1, r[ok] == 1
            both = ~np.isnan(r) & ~np.isnan(model)
            sens = vs.wilson(int(np.sum(yr & yt)), int(np.sum(yt)))
            spec = vs.wilson(int(np.sum(~yr & ~yt)), int(np.sum(~yt)))
            per["readers"][reader] = {
                "sensitivity": dict(zip(("value", "low", "high"), sens, strict=True)),
                "specificity": dict(zip(("value", "low", "high"), spec, strict=True)),
                "model_kappa": vs.cohen_kappa(model[both], r[both]),
            }
        stack = np.stack(list(reads.values()), axis=1)
        complete = ~np.isnan(stack).any(axis=1)
        per["fleiss_kappa"] = vs.fleiss_kappa(stack[complete])
        out["labels"][label] = per
    return out


def subgroup_value(column: str, value: Any) -> str:
    if column != "thickness":
        return str(value).strip() or "unknown"
    number = pd.to_numeric(value, errors="coerce")
    if pd.isna(number):
        return "unknown"
    return next((name for low, high, name in THICKNESS_BINS if low < number <= high), "> 5 mm")


def subgroup_figures(
    joined: Joined,
    assessed: np.ndarray,
    thresholds: dict[str, float],
    options: ValidateOptions,
) -> dict[str, Any]:
    """AUC and sensitivity of "any" per subgroup of each header column, with CIs."""
    rows, y, p = label_arrays(joined, assessed, "any")
    out: dict[str, Any] = {}
    for column in options.subgroups:
        if column not in joined.studies:
            continue
        values = joined.studies[column].iloc[rows].map(lambda v, c=column: subgroup_value(c, v))
        groups = {}
        for k, (name, members) in enumerate(values.groupby(values, sort=True).groups.items()):
            at = values.index.get_indexer(members)
            figures = label_figures(y[at], p[at], thresholds["any"], options, salt=100 + k)
            groups[str(name)] = {
                "studies": figures["studies"],
                "positives": figures["positives"],
                "auc": figures["auc"],
                "sensitivity": figures["operating_point"]["sensitivity"],
                "small": figures["studies"] < options.min_group or figures["positives"] < 5,
            }
        out[column] = groups
    return out


def failures(
    joined: Joined, assessed: np.ndarray, thresholds: dict[str, float]
) -> list[dict[str, Any]]:
    """Every false negative and false positive at the operating point, by label."""
    out = []
    for label in LABELS:
        rows, y, p = label_arrays(joined, assessed, label)
        for row, truth, prob in zip(rows, y, p, strict=True):
            called = prob >= thresholds[label]
            if called != bool(truth):
                out.append(
                    {
                        "study_id": str(joined.studies["study_id"].iloc[row]),
                        "label": label,
                        "kind": "false positive" if called else "false negative",
                        "probability": float(prob),
                        "threshold": thresholds[label],
                        "probabilities": {k: _number(joined.studies[k].iloc[row]) for k in LABELS},
                    }
                )
    return out


def _number(value: Any) -> float:
    number = pd.to_numeric(value, errors="coerce")
    return math.nan if pd.isna(number) else float(number)


@dataclass
class Validation:
    """What ``validate`` found (``result``: validation.json) and the joined arrays the report
    draws from."""

    result: dict[str, Any]
    joined: Joined
    assessed: np.ndarray
    thresholds: dict[str, float]
    options: ValidateOptions


def assessed_rows(studies: pd.DataFrame) -> np.ndarray:
    """Which studies carry probabilities (older predictions have no status: all)."""
    if "status" not in studies:
        return np.ones(len(studies), dtype=bool)
    return (studies["status"].fillna("assessed").astype(str) == "assessed").to_numpy()


def run_validation(
    studies: pd.DataFrame,
    reference: Reference,
    given: dict[str, float],
    source: str,
    options: ValidateOptions,
) -> Validation:
    """Every figure of the validation of ``studies`` (a studies.csv) against ``reference``;
    ``source``: where the thresholds come from (``model``, ``site`` or a file's name)."""
    joined = join(studies, reference)
    if not len(joined.studies):
        raise ValueError(
            f"no study found on both sides (joined on {joined.key}; {len(joined.only_predicted)} "
            f"predicted, {len(joined.only_reference)} in the reference)"
        )
    assessed = assessed_rows(joined.studies)
    thresholds = choose_thresholds(joined, assessed, source, given, options.target_sensitivity)
    labels = {}
    for k, label in enumerate(LABELS):
        _, y, p = label_arrays(joined, assessed, label)
        labels[label] = label_figures(y, p, thresholds[label], options, salt=k)
    result = {
        "joined_on": joined.key,
        "studies": {
            "joined": int(len(joined.studies)),
            "assessed": int(assessed.sum()),
            "not_assessable": joined.studies["study_id"][~assessed].astype(str).tolist(),
            "only_predicted": joined.only_predicted,
            "only_reference": joined.only_reference,
        },
        "reference_standard": reference.standard,
        "thresholds": {"source": source, "values": thresholds},
        "bootstrap": {"rounds": options.bootstrap, "seed": options.seed},
        "labels": labels,
        "readers": readers_figures(reference, joined, assessed, thresholds),
        "subgroups": subgroup_figures(joined, assessed, thresholds, options),
        "failures": failures(joined, assessed, thresholds),
    }
    return Validation(result, joined, assessed, thresholds, options)
