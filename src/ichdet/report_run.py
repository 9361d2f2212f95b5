"""Reports for a finished prediction: decode each study again and write its HTML."""

from __future__ import annotations

import os
from pathlib import Path

from .predict import PredictResult, _series_inputs, load_input
from .report import HeatMapper, study_report


def write_reports(
    runner, result: PredictResult, data: str | os.PathLike, out: str | os.PathLike, workers: int = 1
) -> list[Path]:
    """One ``<study_id>.html`` per predicted study under ``out``."""
    out = Path(out)
    index, _, _ = load_input(data, workers=workers)
    if "kind" not in index:
        index = index.assign(kind="dicom")
    sources = dict(zip(index["image_id"], index["source"], strict=True))
    models = getattr(runner, "models", None)
    spec = runner.spec
    heatmapper = HeatMapper(models[0], spec.channels, spec.settings.size) if models else None
    paths = []
    for _, summary in result.studies.iterrows():
        study = result.slices[result.slices["study_id"] == summary["study_id"]]
        inputs = {}
        if heatmapper is not None:
            for _, series in index[index["study_id"] == summary["study_id"]].groupby(
                "series_id", sort=False
            ):
                rows = list(
                    series[["image_id", "source", "kind"]].itertuples(index=False, name=None)
                )
                ids, volume, _ = _series_inputs(rows, runner.spec.settings, runner.spec.context)
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
