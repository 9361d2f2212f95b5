"""``ichdet evaluate``: score a predictions file against labels."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from ichdet.cli.common import console, fail


def evaluate(
    predictions: Path = typer.Argument(..., help="predictions CSV (Kaggle form ID,Label)"),
    labels: Path = typer.Argument(..., help="labels CSV (Kaggle form ID,Label)"),
    threshold: float = typer.Option(0.5, help="threshold for sensitivity/specificity"),
    target_sensitivity: float = typer.Option(0.95, help="for the per-label operating points"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    save_thresholds: Path | None = typer.Option(
        None, help="write the operating thresholds (JSON) here, e.g. RUN/thresholds.json"
    ),
) -> None:
    """Weighted log loss, per-label log loss and AUC, sensitivity/specificity, prior baseline."""
    from ichdet.evaluation.evaluate import evaluate_files, print_report

    try:
        report = evaluate_files(predictions, labels, threshold, target_sensitivity)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        fail(str(exc))
    if save_thresholds:
        from ichdet.util.jsonio import write_json

        write_json(
            save_thresholds,
            {
                "target_sensitivity": target_sensitivity,
                "source": str(predictions),
                "labels": report["operating_points"],
            },
        )
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        print_report(report, console)
