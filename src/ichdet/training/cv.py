"""Cross-validation: train every fold into ``RUN/fold_<k>``, then score the out-of-fold set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ichdet.data.study_labels import study_truth
from ichdet.evaluation.metrics import (
    from_long,
    operating_thresholds,
    per_label_auc,
    prior_log_loss,
    weighted_log_loss,
)
from ichdet.labels import LABELS
from ichdet.training.config import FoldConfig, recipe_text
from ichdet.training.distributed import setup_distributed
from ichdet.training.runs import check_run_folder
from ichdet.training.slice_task import fit
from ichdet.util.atomic import write_text
from ichdet.util.jsonio import read_json, write_json
from ichdet.util.tables import write_frame

FitFold = Callable[..., dict[str, Any]]


def index_folds(index: pd.DataFrame) -> list[int]:
    if "fold" not in index:
        raise ValueError("the index has no folds; build it with `ichdet index --folds K`")
    return sorted(int(f) for f in index["fold"].unique() if f >= 0)


def fit_all(
    cfg: FoldConfig,
    resume: bool = False,
    log: Callable[[str], None] = print,
    fit_fold: FitFold = fit,
    force: bool = False,
) -> dict[str, Any]:
    """Train every fold (``fit_fold`` of one fold's config); write out-of-fold predictions,
    ``cv.json`` and out-of-fold thresholds. A complete fold is skipped on ``resume``."""
    cfg.require("index", "cache", "out")
    index = pd.read_parquet(str(cfg.index))
    folds = index_folds(index)
    out = Path(str(cfg.out))
    d, _ = setup_distributed(cfg.device)
    check_run_folder(out, resume, force)
    if d.main:
        write_text(
            out / "config.yaml",
            recipe_text(replace(cfg, fold="all"), "ichdet train recipe (all folds)"),
        )
    scores = {}
    for fold in folds:
        done = out / f"fold_{fold}" / "metrics.json"
        if resume and done.is_file() and read_json(done).get("complete"):
            log(f"fold {fold}: already complete")
        else:
            fold_cfg = replace(cfg, fold=fold, out=str(out / f"fold_{fold}"))
            fit_fold(fold_cfg, resume=resume, log=log, force=force)
        scores[fold] = read_json(done)["weighted_log_loss"]
    if not d.main:
        return {}
    return out_of_fold(index, out, folds, scores, cfg.target_sensitivity)


def out_of_fold(
    index: pd.DataFrame, out: Path, folds: list[int], scores: dict, target: float
) -> dict[str, Any]:
    """Join the folds' validation predictions; write oof_predictions.csv, cv.json, thresholds
    (and oof_studies.csv with study metrics and thresholds when the folds wrote studies)."""
    oof = pd.concat([pd.read_csv(out / f"fold_{f}" / "valid_predictions.csv") for f in folds])
    write_frame(out / "oof_predictions.csv", oof)
    wide = from_long(oof)
    index = index.assign(image_id=index["image_id"].astype(str))
    truth = index.set_index("image_id").loc[wide.index, list(LABELS)].to_numpy(dtype=np.float64)
    probs = wide.to_numpy()
    cv: dict[str, Any] = {"folds": scores, **_scores(truth, probs, target)}
    cv["mean_fold_loss"] = float(np.mean(list(scores.values())))
    thresholds = {
        "target_sensitivity": target,
        "source": "out-of-fold",
        "labels": cv["operating_points"],
    }
    study_files = [out / f"fold_{f}" / "valid_studies.csv" for f in folds]
    if all(p.is_file() for p in study_files):
        studies = pd.concat([pd.read_csv(p, dtype={"study_id": str}) for p in study_files])
        write_frame(out / "oof_studies.csv", studies)
        study_y = study_truth(index).loc[studies["study_id"]].to_numpy(dtype=np.float64)
        study_p = studies[list(LABELS)].to_numpy()
        cv["study"] = _scores(study_y, study_p, target)
        thresholds["study_labels"] = cv["study"]["operating_points"]
    write_json(out / "cv.json", cv)
    write_json(out / "thresholds.json", thresholds)
    return cv


def _scores(truth: np.ndarray, probs: np.ndarray, target: float) -> dict[str, Any]:
    """Weighted log loss, prior baseline, AUC and the operating points (sensitivity and
    specificity at the threshold for ``target`` sensitivity) of out-of-fold predictions."""
    return {
        "cv_weighted_log_loss": weighted_log_loss(truth, probs),
        "prior_log_loss": prior_log_loss(truth),
        "auc": per_label_auc(truth, probs),
        "rows": len(truth),
        "operating_points": operating_thresholds(truth, probs, target),
    }
