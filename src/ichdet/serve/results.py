"""After a study received over DICOM is predicted, before it is marked done: its DICOM results
(SR and Secondary Captures, ``ichdet.reports.dicom_results``; a SEG with a segmenter) under
``studies/<id>/dicom/``, and into the outbox when a destination is configured.

A study read again (instances arrived after its first result) gets a new SR that supersedes the
earlier one: its Predecessor Documents Sequence names the SR it replaces, the series description
says which version it is, and the earlier SR stays in ``dicom/superseded/``."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ichdet.inference.predict import PredictResult
from ichdet.inference.runners import Runner
from ichdet.serve.outbox import Outbox
from ichdet.serve.store import Store
from ichdet.util.atomic import write_text

log = logging.getLogger("ichdet.serve")


class DicomResults:
    def __init__(self, runner: Runner, store: Store, studies: Path, outbox: Outbox | None):
        self.runner, self.store, self.studies, self.outbox = runner, store, studies, outbox

    def __call__(self, study_id: str, result: PredictResult) -> None:
        job = self.store.get(study_id)
        if job is None or job.origin not in ("dicom", "dicomweb"):
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
        from ichdet.reports.dicom_seg import study_segmentation

        masks = Path(result.files["studies"]).parent / "masks"
        seg = study_segmentation(study, masks, sources, __version__)
        datasets += [seg] if seg is not None else []
        folder = self.studies / study_id / "dicom"
        supersede(datasets[0], folder, job.version)
        paths = write_datasets(datasets, folder)
        write_text(folder / "version", str(job.version))
        if self.outbox is not None:
            self.outbox.put(study_id, paths)
        log.info("study %s: %d DICOM result objects", study_id, len(paths))


def supersede(sr: pydicom.Dataset, folder: Path, version: int) -> None:
    """Make ``sr`` the next version of the SR in ``folder`` (moved to ``superseded/``)."""
    earlier, written = folder / "sr_0.dcm", folder / "version"
    if not earlier.is_file() or (written.is_file() and written.read_text() == str(version)):
        return  # the first result, or this version again after a crash
    old = pydicom.dcmread(earlier, stop_before_pixels=True)
    instance = Dataset()
    instance.ReferencedSOPClassUID = old.SOPClassUID
    instance.ReferencedSOPInstanceUID = old.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = old.SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence([instance])
    study = Dataset()
    study.StudyInstanceUID = old.StudyInstanceUID
    study.ReferencedSeriesSequence = Sequence([series])
    sr.PredecessorDocumentsSequence = Sequence([study])
    sr.SeriesDescription = f"ichdet findings v{version} (replaces v{version - 1}; research use)"
    (folder / "superseded").mkdir(exist_ok=True)
    for path in folder.glob("*.dcm"):  # the earlier SR and captures
        path.replace(folder / "superseded" / f"v{version - 1}_{path.name}")
