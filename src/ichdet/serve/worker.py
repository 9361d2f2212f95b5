"""The service's workers: threads that take queued studies from the store and predict them.

A study's folder is ``studies/<id>/``: ``files/`` (what was uploaded), ``result/`` (what
``ichdet predict`` writes) and ``report.html``. The job is marked done with a summary (study
probabilities, flags, key slices, per-slice results in z order) as soon as the prediction is
written. The HTML report is written when first asked for (it costs more than the prediction:
0.74 s vs 0.30 s for a 36-slice study), so the workers' throughput is the model's.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy.orm import Session

from ichdet.inference.predict import PredictResult, predict
from ichdet.inference.runners import Runner
from ichdet.labels import LABELS
from ichdet.selection.choose import SelectionOptions
from ichdet.serve.store import Store
from ichdet.serve.supervise import Supervisor

log = logging.getLogger("ichdet.serve")
HEARTBEAT_SECONDS = 10.0
#: matplotlib's pyplot (the report's curves) is not thread-safe: one report at a time.
_REPORT_LOCK = threading.Lock()


def _series(result: PredictResult) -> list[dict[str, Any]]:
    """Every series of the study: how a person names it, read or not, and why."""
    from ichdet.selection.choose import series_label

    table = result.series if result.series is not None else pd.DataFrame()
    return [
        {"series": series_label(f), "read": bool(f["read"]), "reason": str(f["reason"])}
        for _, f in table.iterrows()
    ]


def _slab_files(slab_sources: Any) -> dict[str, list[str]]:
    """A slab's files (names in the study's folder), for the viewer; {} for a plain slice."""
    if not isinstance(slab_sources, str) or not slab_sources:
        return {}
    return {"slab_files": [Path(p).name for p in json.loads(slab_sources)]}


def summarise(result: PredictResult, runner: Runner) -> dict[str, Any]:
    """The JSON the API returns for a finished study: probabilities, flags and slices, or
    (``assessable`` false) the reason it could not be read; its series either way."""
    from ichdet.inference.study_outputs import is_assessed

    study = result.studies.iloc[0]
    common = {
        "study_uid": str(study["study_id"]),
        "assessable": bool(is_assessed(result.studies).iloc[0]),
        "notes": str(study.get("notes") or ""),
        "series": _series(result),
        "warning": str(study.get("warning") or ""),
        "models": list(runner.names),
        "skipped_files": int(len(result.errors)),
    }
    if not common["assessable"]:
        return {**common, "not_assessable": str(study["reason"]), "slices": []}
    slices = result.slices.reset_index(drop=True)
    sources = dict(zip(result.index["image_id"], result.index["source"], strict=True))
    slab_sources = result.index.get("slab_sources", pd.Series("", result.index.index))
    slabs = dict(zip(result.index["image_id"], slab_sources, strict=True))
    position = {image_id: n for n, image_id in enumerate(slices["image_id"])}
    segmentation, mask_rows = _segmentation(result, study)
    return {
        **common,
        "slices": [
            {
                "n": n,
                "z": None if math.isnan(row.z) else float(row.z),
                "file": Path(sources[row.image_id]).name,
                "probabilities": {k: float(getattr(row, k)) for k in LABELS},
                **_slab_files(slabs.get(row.image_id)),
                **({"mask_row": mask_rows.get(row.image_id)} if segmentation else {}),
            }
            for n, row in enumerate(slices.itertuples(index=False))
        ],
        "probabilities": {k: float(study[k]) for k in LABELS},
        "flags": {k: bool(study[f"{k}_flag"]) for k in LABELS},
        "key_slices": {k: position[study[f"{k}_slice"]] for k in LABELS},
        "thresholds": {k: float(runner.study_thresholds.get(k, 0.5)) for k in LABELS},
        "series_stage": runner.series is not None,
        **({"segmentation": segmentation} if segmentation else {}),
    }


def _segmentation(result: PredictResult, study: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """The study's volumes and its mask file (``predict --segmenter``), and each image id's row
    in that file; ({}, {}) without a segmentation."""
    from ichdet.data.masks import read_series_masks, segmented_file

    if "studies" not in result.files:
        return {}, {}
    path = segmented_file(study, Path(result.files["studies"]).parent / "masks")
    if path is None:
        return {}, {}
    ids = read_series_masks(path)[0]
    measures = {
        k: float(v) for k, v in study.items() if str(k).startswith(("volume_ml_", "thickness_mm_"))
    }
    return {"file": path.name, **measures}, {image_id: k for k, image_id in enumerate(ids)}


class Processor:
    """``workers`` threads running the model over queued studies, and a heartbeat thread that
    renews this server's leases, takes back jobs of servers that are gone and applies
    retention; all under a :class:`Supervisor`."""

    def __init__(
        self,
        runner: Runner,
        store: Store,
        root: Path,
        workers: int = 1,
        on_done: Callable[[str, float, bool], None] | None = None,
        retention_days: float = 0.0,
        selection: SelectionOptions | None = None,
    ):
        self.runner, self.store, self.root = runner, store, root
        self.workers, self.on_done, self.selection = workers, on_done, selection
        self.retention = retention_days * 86400
        self.last_cleanup = 0.0
        #: called with (study id, prediction) before a study is marked done (DICOM results);
        #: what they write (the outbox) is never lost to a crash after the job is done
        self.before_done: list[Callable[[str, PredictResult], None]] = []
        #: called with (study id) when a study's files are deleted (its outbox entry)
        self.on_delete: list[Callable[[str], None]] = []
        #: called with (database session, study id) inside the transaction that marks a study
        #: done (the audit log): what they write commits with the status or not at all
        self.in_done: list[Callable[[Session, str], None]] = []
        self.active: set[str] = set()  # the studies this server is predicting now
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.supervisor = Supervisor(self.stopping)

    def start(self) -> None:
        requeued = self.store.requeue_interrupted()
        if requeued:
            log.info("requeued %d interrupted studies", requeued)
        for study_id in self.store.ids("deleting"):  # deletions a crash cut short
            try:
                self.delete(study_id)
            except OSError as exc:  # tried again at the next start
                log.warning("study %s: deletion not finished (%s)", study_id, exc)
        for k in range(self.workers):
            self.supervisor.spawn(f"worker-{k}", self.step)
        self.supervisor.spawn("heartbeat", self.beat, pause=HEARTBEAT_SECONDS)
        self.wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.supervisor.join(timeout=30)

    def step(self) -> None:
        study_id = self.store.claim_next()
        if study_id is None:
            self.wake.wait(timeout=1.0)
            self.wake.clear()
            return
        self.process(study_id)

    def beat(self) -> None:
        self.store.beat(list(self.active))
        if self.store.requeue_expired():
            self.wake.set()
        self.cleanup()

    def cleanup(self) -> None:
        """Retention: at most once a minute, delete finished studies past their time."""
        if not self.retention or time.time() - self.last_cleanup < 60:
            return
        self.last_cleanup = time.time()
        old = [s for s in self.store.older_than(self.retention) if self.store.mark_deleting(s)]
        for study_id in old:
            self.delete(study_id)
        if old:
            log.info("retention: deleted %d studies", len(old))

    def delete(self, study_id: str) -> None:
        """The rest of a deletion marked in the store: the files, the outbox entry, the row."""
        shutil.rmtree(self.root / study_id, ignore_errors=True)
        if (self.root / study_id).exists():
            raise OSError(f"study {study_id}: its files could not be removed")
        for hook in self.on_delete:
            hook(study_id)
        self.store.remove(study_id)

    def process(self, study_id: str) -> None:
        self.active.add(study_id)
        try:
            self._process(study_id)
        finally:  # a study left running without its lease renewed goes back to the queue
            self.active.discard(study_id)

    def _process(self, study_id: str) -> None:
        folder = self.root / study_id
        started = time.perf_counter()
        try:
            out = folder / "result"
            shutil.rmtree(out, ignore_errors=True)  # a rerun after a crash starts clean
            result = predict(self.runner, folder / "files", out, selection=self.selection)
            if result.studies.empty:
                raise ValueError("no slice could be read")
            summary = summarise(result, self.runner)
            for hook in self.before_done:
                hook(study_id, result)
            self._finish(study_id, summary, patient_columns(result))
        except Exception as exc:  # noqa: BLE001 - one study must never stop the service
            self.store.fail(study_id, f"{type(exc).__name__}: {exc}")
            log.warning("study %s failed (%s)", study_id, type(exc).__name__)
            self._done(study_id, started, ok=False)
            return
        self._done(study_id, started, ok=True)

    def _finish(self, study_id: str, summary: dict[str, Any], patient: dict[str, str]) -> None:
        if summary["assessable"]:
            flagged, p_any = any(summary["flags"].values()), summary["probabilities"]["any"]
        else:  # "not assessable" is a result, never a probability
            flagged, p_any = False, None

        def also(session: Session) -> None:
            for hook in self.in_done:
                hook(session, study_id)

        if not self.store.finish(study_id, summary, flagged, p_any, patient, also):
            log.warning("study %s: its lease went to another server; result dropped", study_id)
            return
        log.info(
            "study %s done (%d slices%s)",
            study_id,
            len(summary["slices"]),
            "" if summary["assessable"] else ", not assessable",
        )

    def _done(self, study_id: str, started: float, ok: bool) -> None:
        if self.on_done:
            self.on_done(study_id, time.perf_counter() - started, ok)

    def report(self, study_id: str) -> Path:
        """``report.html`` of a done study, written on first use from its result folder."""
        from ichdet.reports.study_reports import write_reports

        folder = self.root / study_id
        path = folder / "report.html"
        with _REPORT_LOCK:
            if not path.is_file():
                result = stored_result(folder)
                paths, failed = write_reports(self.runner, result, folder / "report")
                if not paths:
                    raise ValueError(failed[0][1] if failed else "no report")
                paths[0].replace(path)
                shutil.rmtree(folder / "report", ignore_errors=True)
        return path


def patient_columns(result: PredictResult) -> dict[str, str]:
    """The worklist columns of a study, from the header of one of its files (patient data:
    kept in the store, shown to authenticated callers only, never logged)."""
    import pydicom

    frame = result.inputs if result.inputs is not None else result.index
    if frame is None or not len(frame):
        return {}
    ds = pydicom.dcmread(str(frame["source"].iloc[0]), stop_before_pixels=True)
    return {
        "patient_name": str(ds.get("PatientName", "") or ""),
        "patient_id": str(ds.get("PatientID", "") or ""),
        "accession": str(ds.get("AccessionNumber", "") or ""),
        "study_date": str(ds.get("StudyDate", "") or ""),
        "description": str(ds.get("StudyDescription", "") or ""),
    }


def stored_result(folder: Path) -> PredictResult:
    """A finished study's prediction, read back from ``result/`` (and its files' headers)."""
    from ichdet.data.index import build_index
    from ichdet.inference.study_outputs import read_rows

    ids = {"image_id": str, "study_id": str, "series_id": str, "slab_ids": str}
    slices = pd.read_csv(folder / "result" / "slices.csv", dtype=ids)
    studies = pd.read_csv(folder / "result" / "studies.csv", dtype=ids, keep_default_na=False)
    for name in LABELS:  # "" where the study was not assessable
        studies[name] = pd.to_numeric(studies[name], errors="coerce")
    series = pd.read_csv(folder / "result" / "series.csv", dtype=ids, keep_default_na=False)
    series["read"] = series["read"].astype(str) == "True"
    series["series_number"] = pd.to_numeric(series["series_number"], errors="coerce")
    inputs = build_index(folder / "files")[0]
    errors = pd.DataFrame(columns=["source", "reason"])
    rows = read_rows(slices, inputs)
    files = {"studies": folder / "result" / "studies.csv"}
    return PredictResult(rows, slices, studies, errors, None, files, 0, inputs, series)
