"""``ichdet evaluate``: score a Kaggle-form predictions CSV against a labels CSV."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from ichdet.data.index import read_long_labels
from ichdet.evaluation.metrics import evaluate_arrays, from_long
from ichdet.labels import LABELS


def evaluate_files(
    predictions: str | os.PathLike,
    labels: str | os.PathLike,
    threshold: float = 0.5,
    target_sensitivity: float = 0.95,
) -> dict:
    """Score the images that have both a prediction and labels (:func:`evaluate_arrays`).

    The report counts labelled images without a prediction and predictions without labels, so
    a fold's predictions can be scored against the full training labels.
    """
    probs = from_long(pd.read_csv(predictions))
    truth, _ = read_long_labels(Path(labels).read_text())
    common = truth.index.intersection(probs.index)
    if common.empty:
        raise ValueError(f"{predictions} and {labels} share no image ids")
    report = evaluate_arrays(
        truth.loc[common, list(LABELS)].to_numpy(dtype=np.float64),
        probs.loc[common].to_numpy(dtype=np.float64),
        threshold,
        target_sensitivity,
    )
    report["labelled_without_prediction"] = int(len(truth.index.difference(common)))
    report["predictions_without_labels"] = int(len(probs.index.difference(common)))
    return report


def print_report(report: dict, console: Console) -> None:
    table = Table(
        "label",
        "prevalence",
        "log loss",
        "AUC",
        f"sens@{report['threshold']:g}",
        f"spec@{report['threshold']:g}",
        "thr@target",
        "sens",
        "spec",
        title=f"{report['images']} images",
    )
    for name in LABELS:
        op = report["operating_points"][name]
        table.add_row(
            name,
            f"{report['prevalence'][name]:.2%}",
            f"{report['log_loss'][name]:.4f}",
            f"{report['auc'][name]:.3f}",
            f"{report['sensitivity'][name]:.3f}",
            f"{report['specificity'][name]:.3f}",
            f"{op['threshold']:.3f}",
            f"{op['sensitivity']:.3f}",
            f"{op['specificity']:.3f}",
        )
    console.print(table)
    if report.get("labelled_without_prediction"):
        console.print(
            f"{report['labelled_without_prediction']} labelled image(s) have no prediction "
            "and were left out",
            style="yellow",
            markup=False,
        )
    ratio = report["weighted_log_loss"] / report["prior_log_loss"]
    console.print(
        f"weighted log loss {report['weighted_log_loss']:.4f}  "
        f"prior-only baseline {report['prior_log_loss']:.4f}  (ratio {ratio:.2f})"
    )
