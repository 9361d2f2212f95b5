"""``ichdet evaluate``: score a predictions file against labels."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from ichdet.cli.common import console, fail


def evaluate(
    predictions: Path = typer.Argument(
        ..., help="predictions CSV (Kaggle form ID,Label); with --masks: predict's OUT folder"
    ),
    labels: Path = typer.Argument(
        ..., help="labels CSV (Kaggle form ID,Label); with --masks: the index with masks"
    ),
    masks: bool = typer.Option(
        False, "--masks", help="score predicted masks: Dice, HD95, volume CCC and Bland-Altman"
    ),
    threshold: float = typer.Option(0.5, help="threshold for sensitivity/specificity"),
    target_sensitivity: float = typer.Option(0.95, help="for the per-label operating points"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    save_thresholds: Path | None = typer.Option(
        None, help="write the operating thresholds (JSON) here, e.g. RUN/thresholds.json"
    ),
) -> None:
    """Weighted log loss, per-label log loss and AUC, sensitivity/specificity, prior baseline;
    with --masks the segmentation figures per subtype."""
    if masks:
        _evaluate_masks(predictions, labels, as_json)
        return
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


def _evaluate_masks(predictions: Path, index: Path, as_json: bool) -> None:
    from rich.table import Table

    from ichdet.evaluation.mask_eval import evaluate_masks

    try:
        summary, _, skipped = evaluate_masks(predictions, index)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps({**summary, "skipped": skipped}, indent=2) + "\n")
        return
    table = Table("label", "series w/ blood", "Dice (mean)", "Dice (pooled)", "HD95 mm")
    for name in ("volume CCC", "bias mL", "95% limits mL"):
        table.add_column(name)
    for label, row in summary["labels"].items():
        v = row["volume"]
        table.add_row(
            label,
            str(row["series_with_blood"]),
            f"{row['dice_mean']:.3f}",
            f"{row['dice_pooled']:.3f}",
            f"{row['hd95_median_mm']:.1f}",
            f"{v['ccc']:.3f}",
            f"{v['bias']:+.2f}",
            f"{v['lower']:+.2f}..{v['upper']:+.2f}",
        )
    console.print(table)
    console.print(f"{summary['series']} series scored; {len(skipped)} skipped")
    for path, reason in skipped[:5]:
        console.print(f"  skipped {path}: {reason}")
