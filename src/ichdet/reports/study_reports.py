"""Reports for a finished prediction: decode each study's series again and write its HTML."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ichdet.inference.predict import PredictResult, series_inputs
from ichdet.inference.runners import Runner
from ichdet.reports.heatmaps import HeatMapper
from ichdet.reports.html import study_report


def write_reports(runner: Runner, result: PredictResult, out: str | os.PathLike) -> list[Path]:
    """One ``<study_id>.html`` per predicted study under ``out``.

    The model inputs are decoded again per study (keeping every study's inputs from the
    prediction pass would hold a whole dataset in memory).
    """
    out = Path(out)
    index = result.index
    sources = dict(zip(index["image_id"], index["source"], strict=True))
    model = runner.heatmap_model()  # torch runners only: heat maps need gradients
    spec = runner.spec
    heatmapper = HeatMapper(model, spec.channels, spec.settings.size) if model else None
    paths = []
    for _, summary in result.studies.iterrows():
        study = result.slices[result.slices["study_id"] == summary["study_id"]]
        inputs: dict[str, np.ndarray] = {}
        if heatmapper is not None:
            in_study = index[index["study_id"] == summary["study_id"]]
            for _, series in in_study.groupby("series_id", sort=False):
                rows = list(
                    series[["image_id", "source", "kind"]].itertuples(index=False, name=None)
                )
                ids, volume, _ = series_inputs(rows, spec.settings, spec.context)
                if volume is not None:
                    inputs.update(zip(ids, volume, strict=True))
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in str(summary["study_id"]))
        paths.append(
            study_report(
                study.reset_index(drop=True),
                summary,
                sources,
                inputs,
                runner.thresholds,
                heatmapper,
                out / f"{name}.html",
            )
        )
    return paths
