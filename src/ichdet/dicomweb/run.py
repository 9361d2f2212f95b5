"""``ichdet predict MODEL dicomweb+https://HOST/dicom-web --study UID | --query Q [--stow]``.

Find the studies (QIDO-RS), choose each study's series from its metadata, fetch only those
(WADO-RS; in ``workers`` processes, or as Ray tasks with ``--engine ray``) into
``OUT/dicomweb/STUDY/SERIES/``, predict them as a folder (the local engine or Ray), and with
``stow`` store each study's SR and Secondary Captures (and SEG) back (STOW-RS). A rerun finds
the series fetched before and, with Ray, the series scored before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ichdet.data.index import build_index, write_index
from ichdet.dicomweb.client import DicomwebServer
from ichdet.dicomweb.fetch import StudyPlan, fetch_chunk, find_studies, parse_query, plan_study
from ichdet.inference.predict import PredictResult, predict
from ichdet.selection.choose import SelectionOptions
from ichdet.util.names import path_component
from ichdet.util.parallel import map_chunks
from ichdet.util.tables import write_csv, write_frame

FETCHED = "dicomweb"
INDEX = "dicomweb_index.parquet"


@dataclass
class DicomwebRun:
    result: PredictResult | None
    plans: list[StudyPlan]
    failed: list[tuple[str, str]] = field(default_factory=list)  #: (what, why)
    stored: int = 0  #: instances stored back by STOW-RS


@dataclass(frozen=True)
class Request:
    """Which studies: UIDs given, or a QIDO-RS query (``--query``), or both."""

    studies: tuple[str, ...] = ()
    query: str | None = None

    def study_uids(self, client: Any) -> list[str]:
        if not self.studies and not self.query:
            raise ValueError("a DICOMweb input needs --study UID or --query FILTERS")
        found = list(self.studies)
        if self.query:
            found += find_studies(client, parse_query(self.query))
        return list(dict.fromkeys(found))


def fetch_studies(
    server: DicomwebServer,
    request: Request,
    root: Path,
    selection: SelectionOptions,
    training_mm: float | None,
    workers: int = 1,
    mapper: Callable[..., list] = map_chunks,
) -> tuple[list[StudyPlan], list[tuple[str, str]]]:
    """Plan every study and fetch the chosen series into ``root``; returns (plans,
    failures)."""
    client = server.client()
    plans = [plan_study(client, uid, selection, training_mm) for uid in request.study_uids(client)]
    jobs = [(server, p.study, s, str(root)) for p in plans for s in p.series]
    failed = mapper(fetch_chunk, jobs, workers, max_chunk=1)
    failed += [(p.study, f"not fetched: {p.reason}") for p in plans if not p.series]
    return plans, failed


def predict_dicomweb(
    runner: Any,
    server: DicomwebServer,
    request: Request,
    out: Path,
    stow: bool = False,
    mapper: Callable[..., list] = map_chunks,
    **predict_args: Any,
) -> DicomwebRun:
    """See the module docstring; ``predict_args`` go to :func:`ichdet.inference.predict.predict`
    (``workers`` also sets the fetching processes)."""
    out.mkdir(parents=True, exist_ok=True)
    selection = predict_args.get("selection") or SelectionOptions()
    workers = int(predict_args.get("workers", 1))
    root = out / FETCHED
    plans, failed = fetch_studies(
        server, request, root, selection, runner.slice_spacing, workers, mapper
    )
    write_frame(out / "dicomweb_studies.csv", plans_summary(plans))
    index = _index(root, plans, out, failed)
    write_csv(out / "dicomweb_errors.csv", ["what", "reason"], failed)
    if index is None:
        return DicomwebRun(None, plans, failed)
    result = predict(runner, index, out, **predict_args)
    run = DicomwebRun(result, plans, failed)
    if stow:
        run.stored = store_results(runner, server, result, out / "dicom", run.failed)
        write_csv(out / "dicomweb_errors.csv", ["what", "reason"], run.failed)
    return run


def _index(root: Path, plans: list[StudyPlan], out: Path, failed: list) -> Path | None:
    """The index of this request's studies among those fetched into ``root`` (a folder that
    also keeps earlier requests' studies), or None when none was fetched; files that cannot
    be indexed go to ``failed``."""
    frames = []
    for plan in plans:
        folder = root / path_component(plan.study)
        if plan.series and folder.is_dir():
            frame, errors, _ = build_index(folder)
            frames.append(frame)
            failed += list(errors.itertuples(index=False, name=None))
    if not frames or not sum(len(f) for f in frames):
        return None
    index = pd.concat(frames, ignore_index=True)
    return write_index(index, pd.DataFrame(columns=["source", "reason"]), {}, out / INDEX)


def store_results(
    runner: Any, server: DicomwebServer, result: PredictResult, out: Path, failed: list
) -> int:
    """Each study's SR and Secondary Captures (and SEG) written under ``out`` and stored
    back by STOW-RS, study by study; returns the instances stored."""
    import pydicom

    from ichdet import __version__
    from ichdet.reports.dicom_results import write_study_results

    paths, errors = write_study_results(runner, result, out, __version__)
    failed += [(study, f"results not written: {why}") for study, why in errors]
    by_folder: dict[Path, list[Path]] = {}
    for path in paths:
        by_folder.setdefault(path.parent, []).append(path)
    client, stored = server.client(), 0
    for files in by_folder.values():
        datasets = [pydicom.dcmread(p) for p in files]
        study = str(datasets[0].StudyInstanceUID)
        try:
            client.store_instances(datasets, study_instance_uid=study)
            stored += len(datasets)
        except Exception as exc:  # noqa: BLE001 - one study's STOW must not stop the others
            failed.append((study, f"STOW-RS failed: {type(exc).__name__}: {exc}"))
    return stored


def plans_summary(plans: list[StudyPlan]) -> pd.DataFrame:
    return pd.DataFrame(
        [(p.study, ";".join(p.series), p.reason) for p in plans],
        columns=["study_id", "series", "reason"],
    )
