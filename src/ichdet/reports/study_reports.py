"""Reports for a finished prediction: decode each study's series again and write its HTML."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ichdet.inference.decode import series_inputs
from ichdet.inference.predict import PredictResult
from ichdet.inference.runners import Runner
from ichdet.reports.heatmaps import HeatMapper
from ichdet.reports.html import study_report
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
    paths, failed = [], []
    for _, summary in result.studies.iterrows():
        study_id = str(summary["study_id"])
        try:
            paths.append(_one_report(runner, result, summary, heatmapper, out))
        except Exception as exc:  # noqa: BLE001 - one study must never stop the others
            failed.append((study_id, f"report failed: {type(exc).__name__}: {exc}"))
    return paths, failed


def _one_report(
    runner: Runner,
    result: PredictResult,
    summary: pd.Series,
    heatmapper: HeatMapper | None,
    out: Path,
) -> Path:
    index, spec = result.index, runner.spec
    study = result.slices[result.slices["study_id"] == summary["study_id"]]
    inputs: dict[str, np.ndarray] = {}
    if heatmapper is not None:
        in_study = index[index["study_id"] == summary["study_id"]]
        for _, series in in_study.groupby("series_id", sort=False):
            rows = list(series[["image_id", "source", "kind"]].itertuples(index=False, name=None))
            ids, volume, _ = series_inputs(rows, spec.settings, spec.context)
            if volume is not None:
                inputs.update(zip(ids, volume, strict=True))
    sources = in_study_sources(index, summary["study_id"])
    return study_report(
        study.reset_index(drop=True),
        summary,
        sources,
        inputs,
        runner.thresholds,
        heatmapper,
        out / f"{path_component(str(summary['study_id']))}.html",
        models=len(runner.names),
    )


def in_study_sources(index: pd.DataFrame, study_id: str) -> dict[str, str]:
    rows = index[index["study_id"] == study_id]
    return dict(zip(rows["image_id"], rows["source"], strict=True))
