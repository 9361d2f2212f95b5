"""Site thresholds (and an optional calibration map) fitted on a site's own studies, and their
use by ``predict``, ``serve`` and ``listen`` (``--site site.json``).

Per label, the threshold is the highest one that reaches the target sensitivity on these studies;
the file says how many positives it rests on (a threshold from 5 positives is a guess). The
calibration map is Platt scaling (``p' = 1 / (1 + exp(-(a + b logit p)))``), fitted on all
studies; the figures shown for it are cross-validated (5 folds: each study calibrated by a map
fitted without it). A site file belongs to one model: its digest is recorded, and a model with
another digest refuses the file.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from ichdet.evaluation import validation_stats as vs
from ichdet.labels import LABELS
from ichdet.util.jsonio import read_json, write_json

EPS = 1e-6


class SiteError(ValueError):
    pass


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(q / (1 - q))


def platt_fit(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    fit = LogisticRegression(C=np.inf, max_iter=1000).fit(_logit(p).reshape(-1, 1), y)
    return float(fit.intercept_[0]), float(fit.coef_[0, 0])


def platt(p: np.ndarray, a: float, b: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(a + b * _logit(p))))


def cross_validated(y: np.ndarray, p: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each study's probability calibrated by a Platt map fitted on the other folds."""
    out = np.array(p, dtype=float)
    splits = min(folds, int(np.sum(y)), int(np.sum(1 - y)))
    if splits < 2:
        return out
    for train, test in StratifiedKFold(splits, shuffle=True, random_state=seed).split(p, y):
        if vs.both_classes(y[train]):
            out[test] = platt(p[test], *platt_fit(y[train], p[train]))
    return out


def fit_site(
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
    target: float,
    digest: str,
    calibrate: bool = False,
    fallback: dict[str, float] | None = None,
) -> dict[str, Any]:
    """site.json's content from each label's (y, p) on the site's assessed studies; a label
    without positives here keeps ``fallback``'s threshold (the model's), and says so."""
    labels: dict[str, Any] = {}
    calibration: dict[str, Any] = {}
    for label, (y, p) in arrays.items():
        q = p
        if calibrate and vs.both_classes(y):
            a, b = platt_fit(y, p)
            shown = cross_validated(y, p)
            calibration[label] = {
                "a": a,
                "b": b,
                "cross_validated": {
                    "brier_before": vs.calibration(y, p)["brier"],
                    "brier_after": vs.calibration(y, shown)["brier"],
                    "ece_before": vs.calibration(y, p)["ece"],
                    "ece_after": vs.calibration(y, shown)["ece"],
                },
            }
            q = platt(p, a, b)
        threshold = vs.threshold_for_sensitivity(y, q, target)
        source = f"sensitivity {target} here"
        if math.isnan(threshold):
            threshold, source = float((fallback or {}).get(label, 0.5)), "the model's: no positives"
        labels[label] = {
            "threshold": threshold,
            "from": source,
            "positives": int(np.sum(y)),
            "studies": int(len(y)),
            "sensitivity": vs.confusion(y, q, threshold)["sensitivity"]["value"],
        }
    site: dict[str, Any] = {
        "model_digest": digest,
        "fitted": time.strftime("%Y-%m-%d"),
        "target_sensitivity": target,
        "labels": labels,
    }
    if calibration:
        site["calibration"] = {"method": "platt", "labels": calibration}
    return site


def write_site(path: Path, site: dict[str, Any]) -> None:
    write_json(path, site)


def read_site(path: Path, digest: str) -> dict[str, Any]:
    """A site file for the model of ``digest`` (SiteError otherwise, or when malformed)."""
    try:
        site = read_json(path)
        labels = site["labels"]
        thresholds = {k: float(labels[k]["threshold"]) for k in LABELS}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SiteError(f"{path}: not a site file ({type(exc).__name__}: {exc})") from None
    if site.get("model_digest") != digest:
        raise SiteError(
            f"{path}: fitted for model {site.get('model_digest')!r}, not this one ({digest!r}); "
            "fit it again with `ichdet validate --fit-site`"
        )
    if any(math.isnan(v) for v in thresholds.values()):
        missing = [k for k, v in thresholds.items() if math.isnan(v)]
        raise SiteError(f"{path}: no threshold for {', '.join(missing)} (no positives there)")
    site["thresholds"] = thresholds
    site["source"] = f"site ({path.name}, fitted {site.get('fitted', '?')})"
    return site


def apply_site(studies: pd.DataFrame, site: dict[str, Any]) -> pd.DataFrame:
    """``studies`` (a studies table) with the site's calibration on its probabilities and its
    thresholds on its flags; rows not assessed are left as they are."""
    out = studies.copy()
    rows = (
        out["status"].astype(str) == "assessed" if "status" in out else pd.Series(True, out.index)
    )
    maps = site.get("calibration", {}).get("labels", {})
    for label in LABELS:
        p = pd.to_numeric(out.loc[rows, label], errors="coerce").to_numpy(dtype=float)
        if label in maps:
            p = platt(p, maps[label]["a"], maps[label]["b"])
            out.loc[rows, label] = p
        flag = out[f"{label}_flag"].astype(object)
        flag[rows] = p >= site["thresholds"][label]
        out[f"{label}_flag"] = flag
    return out


def use_site(runner: Any, path: Path) -> dict[str, Any]:
    """Make ``runner`` (a loaded model) flag with the site file at ``path``: its thresholds
    become the study thresholds, and ``predict`` applies its calibration (``runner.site``)."""
    site = read_site(path, getattr(runner, "digest", ""))
    runner.study_thresholds = dict(site["thresholds"])
    runner.site = site
    return site
