"""The competition metric and the clinical ones (pure numpy / scikit-learn).

Arrays are (N, 6) in LABELS order; probabilities in (0, 1), labels in {0, 1}, or NaN where a
label is unknown (a partly labelled set): every metric skips the unknown cells.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score, roc_curve

from ichdet.labels import LABELS, WEIGHT_VECTOR, format_kaggle_id, parse_kaggle_id

EPS = 1e-7


def weighted_log_loss(
    y_true: np.ndarray, y_prob: np.ndarray, weights: np.ndarray = WEIGHT_VECTOR
) -> float:
    """RSNA metric: per-row label log losses averaged with weights (any: 2), then over rows.

    Unknown (NaN) labels are skipped: the weighted mean runs over the known cells, which is the
    competition's formula when every label is known.
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.clip(np.asarray(y_prob, dtype=np.float64), EPS, 1 - EPS)
    known = ~np.isnan(y)
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), y.shape) * known
    if w.sum() == 0:
        return math.nan
    y = np.where(known, y, 0.0)
    per = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float((per * w).sum() / w.sum())


def _known(y_true: np.ndarray, y_prob: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Label ``i``'s (truth, probability) on the rows where the truth is known."""
    yi = np.asarray(y_true[:, i], dtype=np.float64)
    keep = ~np.isnan(yi)
    return yi[keep], np.asarray(y_prob[:, i], dtype=np.float64)[keep]


def per_label_log_loss(y_true: np.ndarray, y_prob: np.ndarray) -> dict[str, float]:
    """Log loss per label over its known rows; NaN where none is known."""
    out = {}
    for i, name in enumerate(LABELS):
        yi, pi = _known(y_true, y_prob, i)
        pi = np.clip(pi, EPS, 1 - EPS)
        out[name] = float(log_loss(yi, pi, labels=[0, 1])) if len(yi) else math.nan
    return out


def per_label_auc(y_true: np.ndarray, y_prob: np.ndarray) -> dict[str, float]:
    """ROC AUC per label over its known rows; NaN where those hold a single class."""
    out = {}
    for i, name in enumerate(LABELS):
        yi, pi = _known(y_true, y_prob, i)
        out[name] = float(roc_auc_score(yi, pi)) if 0 < yi.sum() < len(yi) else math.nan
    return out


def prevalence(y_true: np.ndarray) -> np.ndarray:
    """Per-label share of positives among the known labels (NaN where none is known)."""
    y = np.asarray(y_true, dtype=np.float64)
    known = (~np.isnan(y)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(known > 0, np.nansum(y, axis=0) / np.maximum(known, 1), math.nan)


def prior_probabilities(y_true: np.ndarray) -> np.ndarray:
    """Per-label prevalence, the best constant prediction (clipped away from 0 and 1)."""
    return np.clip(np.nan_to_num(prevalence(y_true), nan=0.5), EPS, 1 - EPS)


def prior_log_loss(y_true: np.ndarray, prior: np.ndarray | None = None) -> float:
    """Weighted log loss of predicting a constant prior for every row."""
    prior = prior_probabilities(y_true) if prior is None else prior
    return weighted_log_loss(y_true, np.broadcast_to(prior, np.shape(y_true)))


def sensitivity_specificity(
    y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray | float
) -> dict[str, tuple[float, float]]:
    """(sensitivity, specificity) per label at the given threshold(s)."""
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(LABELS),))
    out = {}
    for i, name in enumerate(LABELS):
        pred = y_prob[:, i] >= thr[i]
        pos, neg = y_true[:, i] == 1, y_true[:, i] == 0
        sens = float(pred[pos].mean()) if pos.any() else math.nan
        spec = float((~pred[neg]).mean()) if neg.any() else math.nan
        out[name] = (sens, spec)
    return out


def threshold_for_sensitivity(
    y_true: np.ndarray, y_prob: np.ndarray, target: float = 0.95
) -> float:
    """The highest threshold whose sensitivity reaches ``target`` (one label's columns)."""
    keep = ~np.isnan(np.asarray(y_true, dtype=np.float64))
    y_true, y_prob = np.asarray(y_true)[keep], np.asarray(y_prob)[keep]
    if not 0 < y_true.sum() < len(y_true):
        return 0.5
    fpr, tpr, thr = roc_curve(y_true, y_prob)
    ok = np.flatnonzero(tpr >= target)
    return float(min(1.0, thr[ok[0]])) if len(ok) else 0.0


def operating_thresholds(
    y_true: np.ndarray, y_prob: np.ndarray, target: float = 0.95
) -> dict[str, dict[str, float]]:
    """Per label: threshold for ``target`` sensitivity, and the sensitivity/specificity there."""
    out = {}
    for i, name in enumerate(LABELS):
        t = threshold_for_sensitivity(y_true[:, i], y_prob[:, i], target)
        sens, spec = sensitivity_specificity(
            y_true[:, [i] * len(LABELS)], y_prob[:, [i] * len(LABELS)], t
        )[LABELS[0]]
        out[name] = {"threshold": t, "sensitivity": sens, "specificity": spec}
    return out


def evaluate_arrays(
    y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5, target_sensitivity: float = 0.95
) -> dict:
    """Everything `ichdet evaluate` reports."""
    sens_spec = sensitivity_specificity(y_true, y_prob, threshold)
    return {
        "images": int(len(y_true)),
        "weighted_log_loss": weighted_log_loss(y_true, y_prob),
        "prior_log_loss": prior_log_loss(y_true),
        "log_loss": per_label_log_loss(y_true, y_prob),
        "auc": per_label_auc(y_true, y_prob),
        "prevalence": dict(zip(LABELS, map(float, prevalence(y_true)), strict=True)),
        "labelled": dict(zip(LABELS, map(int, (~np.isnan(y_true)).sum(axis=0)), strict=True)),
        "threshold": threshold,
        "sensitivity": {k: v[0] for k, v in sens_spec.items()},
        "specificity": {k: v[1] for k, v in sens_spec.items()},
        "operating_points": operating_thresholds(y_true, y_prob, target_sensitivity),
    }


# ------------------------------------------------------------- Kaggle long form <-> arrays


def to_long(image_ids: list[str] | np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """(N, 6) probabilities -> Kaggle submission rows ``ID_<image>_<label>,Label``."""
    ids = [format_kaggle_id(i, name) for i in image_ids for name in LABELS]
    return pd.DataFrame({"ID": ids, "Label": np.asarray(probs, dtype=np.float64).reshape(-1)})


def from_long(df: pd.DataFrame) -> pd.DataFrame:
    """Kaggle long rows -> wide table indexed by image id (duplicates: first kept)."""
    df = df.drop_duplicates("ID")
    parsed = [parse_kaggle_id(i) for i in df["ID"]]
    wide = pd.DataFrame(
        {
            "image_id": [p[0] for p in parsed],
            "label": [p[1] for p in parsed],
            "value": df["Label"].to_numpy(dtype=np.float64),
        }
    )
    return wide.pivot(index="image_id", columns="label", values="value")[list(LABELS)]
