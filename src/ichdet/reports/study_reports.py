"""Reports for a finished prediction: decode each study's series again and write its HTML."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ichdet.inference.decode import frame_rows, series_inputs
from ichdet.inference.predict import PredictResult
from ichdet.inference.runners import Runner
from ichdet.inference.study_outputs import is_assessed
from ichdet.reports.heatmaps import HeatMapper
from ichdet.reports.html import not_assessable_report, study_report
from ichdet.reports.seg_overlay import segmentation_section
from ichdet.util.names import path_component


def write_reports(
    runner: Runner, result: PredictResult, out: str | os.PathLike
) -> tuple[list[Path], list[tuple[str, str]]]:
    """One ``<study_id>.html`` per predicted study under ``out``; returns (reports written,
    failures as (study_id, reason)). One study's failure never stops the others.

    File names are the study UID when it is a plain id, else a hash of it (a UID never becomes a
    path as it is). The model inputs are decoded again per study (keeping every study's inputs
    from the prediction pass would hold a whole dataset in memory).
    """
    out = Path(out)
    model = runner.heatmap_model()  # torch runners only: heat maps need gradients
    spec = runner.spec
    heatmapper = HeatMapper(model, spec.channels, spec.settings.size) if model else None
    # one pass over the tables, not one scan of them per study
    index_by_study = dict(tuple(result.index.groupby("study_id", sort=False)))
    slices_by_study = dict(tuple(result.slices.groupby("study_id", sort=False)))
    table = result.series if result.series is not None else pd.DataFrame(columns=["study_id"])
    series_by_study = dict(tuple(table.groupby("study_id", sort=False)))
    paths, failed = [], []
    masks = Path(result.files["studies"]).parent / "masks" if "studies" in result.files else out
    for _, summary in result.studies.iterrows():
        study_id = str(summary["study_id"])
        series = series_by_study.get(summary["study_id"])
        name = out / f"{path_component(study_id)}.html"
        try:
            if not is_assessed(result.studies.loc[[_]]).iloc[0]:
                paths.append(not_assessable_report(summary, series, name))
                continue
            rows, slices = index_by_study[summary["study_id"]], slices_by_study[summary["study_id"]]
            extra = segmentation_section(
                summary, masks, dict(zip(rows["image_id"], rows["source"], strict=True))
            )
            paths.append(
                _one_report(runner, rows, slices, summary, heatmapper, name, series, extra)
            )
        except Exception as exc:  # noqa: BLE001 - one study must never stop the others
            failed.append((study_id, f"report failed: {type(exc).__name__}: {exc}"))
    return paths, failed


def _one_report(
    runner: Runner,
    rows: pd.DataFrame,
    study: pd.DataFrame,
    summary: pd.Series,
    heatmapper: HeatMapper | None,
    out: Path,
    series_table: pd.DataFrame | None = None,
    segmentation: str = "",
) -> Path:
    """One study's page; ``rows`` are its read rows, ``study`` its slices.csv rows."""
    spec = runner.spec
    inputs: dict[str, np.ndarray] = {}
    if heatmapper is not None:
        for _, series in rows.groupby("series_id", sort=False):
            ids, volume, _ = series_inputs(frame_rows(series), spec.settings, spec.context)
            if volume is not None:
                inputs.update(zip(ids, volume, strict=True))
    return study_report(
        study.reset_index(drop=True),
        summary,
        dict(zip(rows["image_id"], rows["source"], strict=True)),
        inputs,
        runner.thresholds,
        heatmapper,
        out,
        models=len(runner.names),
        study_thresholds=runner.study_thresholds,
        series_stage=runner.series is not None,
        series=series_table,
        segmentation=segmentation,
    )
