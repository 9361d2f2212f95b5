"""After a study received over DICOM is predicted: its DICOM results (SR and Secondary
Captures, ``ichdet.reports.dicom_results``) under ``studies/<id>/dicom/``, and into the outbox
when a destination is configured."""

from __future__ import annotations

import logging
from pathlib import Path

from ichdet.inference.predict import PredictResult
from ichdet.inference.runners import Runner
from ichdet.serve.outbox import Outbox
from ichdet.serve.store import Store

log = logging.getLogger("ichdet.serve")


class DicomResults:
    def __init__(self, runner: Runner, store: Store, studies: Path, outbox: Outbox | None):
        self.runner, self.store, self.studies, self.outbox = runner, store, studies, outbox

    def __call__(self, study_id: str, result: PredictResult) -> None:
        job = self.store.get(study_id)
        if job is None or job.origin != "dicom":
            return
        from ichdet import __version__
        from ichdet.reports.dicom_results import dicom_results, result_inputs, write_datasets

        study = result.studies.iloc[0]
        sources, decode, references = result_inputs(result)
        reference = references.get(str(study["study_id"]))
        thresholds = self.runner.study_thresholds
        datasets = dicom_results(
            self.runner,
            study,
            result.slices,
            sources,
            thresholds,
            __version__,
            decode,
            reference,
        )
        paths = write_datasets(datasets, self.studies / study_id / "dicom")
        if self.outbox is not None:
            self.outbox.put(study_id, paths)
        log.info("study %s: %d DICOM result objects", study_id, len(paths))
