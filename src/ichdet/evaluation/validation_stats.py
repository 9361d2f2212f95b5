"""The figures a site validation reports, per label, on study-level truth ``y`` (0/1) and
probabilities ``p``: ROC AUC with a bootstrap CI, average precision, the confusion at a
threshold with Wilson CIs, sensitivity at fixed specificity and back, and calibration (Brier,
expected calibration error, logistic recalibration slope and intercept); and agreement between
readers (Fleiss' kappa) and of two raters (Cohen's kappa).

A figure that the data cannot give (AUC without positives, PPV without a positive call) is NaN,
which the reports print as "undefined" - never a number made up, never a crash.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

Z95 = 1.959963984540054
EPS = 1e-6


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float, float]:
    """(k / n, lower, upper): the Wilson score interval; NaNs when n is 0."""
    if n == 0:
        return math.nan, math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def both_classes(y: np.ndarray) -> bool:
    return bool(len(y)) and 0 < int(np.sum(y)) < len(y)


def auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if both_classes(y) else math.nan


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    return float(average_precision_score(y, p)) if np.sum(y) > 0 else math.nan


def bootstrap_indices(n: int, rounds: int, seed: int) -> np.ndarray:
    """``rounds`` x ``n`` resampled row indices (studies drawn with replacement)."""
    return np.random.default_rng(seed).integers(0, n, size=(rounds, n))


def auc_ci(
    y: np.ndarray, p: np.ndarray, draws: np.ndarray, level: float = 0.95
) -> tuple[float, float, float]:
    """(AUC, lower, upper): the percentile bootstrap CI over resampled studies; a resample
    with one class only is skipped."""
    point = auc(y, p)
    if math.isnan(point) or not len(draws):
        return point, math.nan, math.nan
    values = [roc_auc_score(y[d], p[d]) for d in draws if both_classes(y[d])]
    if not values:
        return point, math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return point, float(low), float(high)


def roc_band(
    y: np.ndarray, p: np.ndarray, draws: np.ndarray, grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The 2.5th and 97.5th percentile of the bootstrap ROC curves' sensitivity at each
    false-positive rate of ``grid`` (the CI band of the ROC plot)."""
    curves = []
    for d in draws:
        if both_classes(y[d]):
            fpr, tpr, _ = roc_curve(y[d], p[d])
            curves.append(np.interp(grid, fpr, tpr))
    if not curves:
        return np.full_like(grid, np.nan), np.full_like(grid, np.nan)
    low, high = np.percentile(np.array(curves), [2.5, 97.5], axis=0)
    return low, high


def confusion(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """Counts at ``p >= threshold`` and sensitivity, specificity, PPV, NPV with Wilson CIs."""
    call = p >= threshold
    tp = int(np.sum(call & (y == 1)))
    fp = int(np.sum(call & (y == 0)))
    tn = int(np.sum(~call & (y == 0)))
    fn = int(np.sum(~call & (y == 1)))
    out: dict[str, Any] = {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    for name, k, n in (
        ("sensitivity", tp, tp + fn),
        ("specificity", tn, tn + fp),
        ("ppv", tp, tp + fp),
        ("npv", tn, tn + fn),
    ):
        value, low, high = wilson(k, n)
        out[name] = {"value": value, "low": low, "high": high}
    return out


def sensitivity_at_specificity(y: np.ndarray, p: np.ndarray, specificity: float) -> float:
    """The highest sensitivity of a threshold whose specificity is at least ``specificity``."""
    if not both_classes(y):
        return math.nan
    fpr, tpr, _ = roc_curve(y, p)
    ok = (1 - fpr) >= specificity - 1e-12
    return float(tpr[ok].max()) if ok.any() else math.nan


def specificity_at_sensitivity(y: np.ndarray, p: np.ndarray, sensitivity: float) -> float:
    """The highest specificity of a threshold whose sensitivity is at least ``sensitivity``."""
    if not both_classes(y):
        return math.nan
    fpr, tpr, _ = roc_curve(y, p)
    ok = tpr >= sensitivity - 1e-12
    return float((1 - fpr[ok]).max()) if ok.any() else math.nan


def threshold_for_sensitivity(y: np.ndarray, p: np.ndarray, sensitivity: float) -> float:
    """The highest threshold that still calls at least ``sensitivity`` of the positives."""
    positives = np.sort(p[y == 1])[::-1]
    if not len(positives):
        return math.nan
    need = max(1, math.ceil(sensitivity * len(positives) - 1e-9))
    return float(positives[need - 1])


def equal_count_bins(p: np.ndarray, bins: int = 10) -> list[np.ndarray]:
    """Row indices in ``bins`` groups of (near) equal size, by increasing probability."""
    order = np.argsort(p, kind="stable")
    return [b for b in np.array_split(order, min(bins, len(p))) if len(b)]


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Brier score, expected calibration error over equal-count bins, the reliability diagram's
    points, and the logistic recalibration (``logit P(y) = a + b logit p``): slope b, intercept
    a (1 and 0 when calibrated); NaN where one class only."""
    if not len(y):
        return {"brier": math.nan, "ece": math.nan, "slope": math.nan, "intercept": math.nan}
    groups = equal_count_bins(p, bins)
    observed = [float(np.mean(y[g])) for g in groups]
    predicted = [float(np.mean(p[g])) for g in groups]
    ece = sum(
        len(g) / len(p) * abs(o - e) for g, o, e in zip(groups, observed, predicted, strict=True)
    )
    slope = intercept = math.nan
    if both_classes(y):
        q = np.clip(p, EPS, 1 - EPS)
        logit = np.log(q / (1 - q)).reshape(-1, 1)
        fit = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(logit, y)
        slope, intercept = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    return {
        "brier": float(brier_score_loss(y, p)),
        "ece": float(ece),
        "slope": slope,
        "intercept": intercept,
        "bins": {"predicted": predicted, "observed": observed, "count": [len(g) for g in groups]},
    }


def fleiss_kappa(ratings: np.ndarray) -> float:
    """Fleiss' kappa of a (subjects x raters) 0/1 matrix (every rater rated every subject)."""
    ratings = np.asarray(ratings, dtype=int)
    subjects, raters = ratings.shape
    if subjects == 0 or raters < 2:
        return math.nan
    counts = np.stack([(ratings == 0).sum(1), (ratings == 1).sum(1)], axis=1)
    agreement = ((counts * (counts - 1)).sum(1) / (raters * (raters - 1))).mean()
    shares = counts.sum(0) / (subjects * raters)
    chance = float((shares**2).sum())
    return math.nan if chance >= 1 else float((agreement - chance) / (1 - chance))


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two 0/1 raters; NaN when both always say the same one thing."""
    from sklearn.metrics import cohen_kappa_score

    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    if not len(a) or (len(set(a)) == 1 and set(a) == set(b)):
        return math.nan
    return float(cohen_kappa_score(a, b))
