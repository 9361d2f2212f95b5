"""Studies from a DICOMweb server: found by QIDO-RS, their series chosen from the WADO-RS
metadata (headers only, before any pixel is fetched), the chosen series fetched by WADO-RS.

Everything the server says is untrusted: UIDs become file names only through
:func:`ichdet.util.names.path_component`, headers are read by ichdet's own reader, and a
series is written into place whole (a folder renamed when complete), so a crash or a lost
connection leaves no half series that a rerun would take for a whole one.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from ichdet.data.index import index_frame, meta_record
from ichdet.dicom.read import DicomError, read_identity, read_meta
from ichdet.dicomweb.client import DicomwebServer
from ichdet.selection.choose import SelectionOptions, plan_reads
from ichdet.util.names import path_component

STUDY_UID, SERIES_UID, INSTANCE_UID = "0020000D", "0020000E", "00080018"
INSTANCES = "00201208"  # NumberOfStudyRelatedInstances
#: QIDO-RS keys a --query may use (attribute keywords of the study level)
QUERY_KEYS = (
    "StudyDate",
    "StudyTime",
    "ModalitiesInStudy",
    "AccessionNumber",
    "PatientID",
    "StudyDescription",
    "StudyInstanceUID",
)


def parse_query(text: str) -> dict[str, str]:
    """``StudyDate=20250101-20250131&ModalitiesInStudy=CT`` -> QIDO-RS search filters."""
    pairs = parse_qsl(text, keep_blank_values=False, strict_parsing=True)
    unknown = sorted({k for k, _ in pairs} - set(QUERY_KEYS))
    if unknown:
        raise ValueError(f"--query: {', '.join(unknown)} not among {', '.join(QUERY_KEYS)}")
    return dict(pairs)


def _value(item: dict, tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0])


#: QIDO-RS page size, and the most pages read (a server that ignores ``offset`` would
#: otherwise give the same page forever)
PAGE = 500
MAX_PAGES = 200


def _uids(search: Callable[..., list[dict]], tag: str, **filters: Any) -> list[str]:
    """Every UID (``tag``) a QIDO-RS search finds (see :func:`_items`)."""
    return list(_items(search, tag, **filters))


def _items(search: Callable[..., list[dict]], tag: str, **filters: Any) -> dict[str, dict]:
    """Every item a QIDO-RS search finds, by its UID (``tag``), page by page; stops at a short
    page, at a page with nothing new, or after ``MAX_PAGES``."""
    found: dict[str, dict] = {}
    for page in range(MAX_PAGES):
        items = search(limit=PAGE, offset=page * PAGE, **filters)
        new = {u: item for item in items if (u := _value(item, tag)) and u not in found}
        found.update(new)
        if len(items) < PAGE or not new:
            break
    return found


def find_studies(client: Any, query: dict[str, str] | None) -> list[str]:
    """StudyInstanceUIDs of the studies matching ``query`` (QIDO-RS, every page)."""
    return _uids(client.search_for_studies, STUDY_UID, search_filters=query or {})


def study_sizes(client: Any, query: dict[str, str] | None) -> dict[str, str]:
    """The studies matching ``query``, each with its NumberOfStudyRelatedInstances as the
    server gives it ("" when it does not): a study still arriving is seen growing."""
    found = _items(client.search_for_studies, STUDY_UID, search_filters=query or {})
    return {uid: _value(item, INSTANCES)[:20] for uid, item in found.items()}


def _as_part10(item: dict) -> bytes:
    """A WADO-RS metadata object as a Part-10 header (bulk data left out) for ichdet's
    reader."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2")
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3")
    ds.file_meta = meta
    sink = io.BytesIO()
    ds.save_as(sink, enforce_file_format=True)
    return sink.getvalue()


def header_record(item: dict, source: str) -> dict | None:
    """An index record of one instance's metadata (a CT slice, or another object of the
    study: a dose report, a capture), or None when it cannot be read at all."""
    try:
        data = _as_part10(item)
    except Exception:  # noqa: BLE001 - a malformed metadata object is skipped, not fatal
        return None
    try:
        return meta_record(read_meta(data), source)
    except (DicomError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, DicomError) else str(exc)
    try:
        identity = read_identity(data)
    except Exception:  # noqa: BLE001 - a damaged header stays unread
        return None
    if not identity.get("study_id") or not identity.get("series_id"):
        return None
    return {**identity, "source": source, "kind": "other", "reason": reason}


@dataclass
class StudyPlan:
    study: str
    series: list[str]  #: the series to fetch
    reason: str = ""  #: why none is fetched


def plan_study(
    client: Any, study: str, selection: SelectionOptions, training_mm: float | None
) -> StudyPlan:
    """The series of ``study`` worth fetching, chosen from their metadata (no pixels):
    ``best`` -> the one series predict would read, ``all``/``off`` -> every readable one."""
    records: list[dict] = []
    for uid in _uids(client.search_for_series, SERIES_UID, study_instance_uid=study):
        for item in client.retrieve_series_metadata(study, uid):
            source = f"dicomweb:{study}/{uid}/{_value(item, INSTANCE_UID)}"
            record = header_record(item, source)
            if record is not None:
                records.append(record)
    slices = [r for r in records if r["kind"] != "other"]
    others = [r for r in records if r["kind"] == "other"]
    if not slices:
        return StudyPlan(study, [], "no CT image series in the study's metadata")
    options = SelectionOptions(
        series=selection.series, slab="off", training_mm=training_mm, image_check=False
    )
    plan = plan_reads(index_frame(slices), others, options)
    chosen = plan.series[plan.series["read"].astype(bool)] if len(plan.series) else plan.series
    if chosen.empty:
        reason = str(plan.studies["reason"].iloc[0]) if len(plan.studies) else "nothing to read"
        return StudyPlan(study, [], reason)
    return StudyPlan(study, [str(s) for s in chosen["series_id"]])


def series_folder(root: Path, study: str, series: str) -> Path:
    return root / path_component(study) / path_component(series)


def fetch_series(server: DicomwebServer, study: str, series: str, root: Path) -> int:
    """WADO-RS: every instance of one series into ``root/STUDY/SERIES/`` (written whole:
    a temporary folder renamed when complete); a series fetched before is kept. Returns
    the instances written (0 when it was there)."""
    target = series_folder(root, study, series)
    if target.is_dir():
        return 0
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    count = 0
    for ds in server.client().iter_series(study, series):
        name = path_component(str(ds.get("SOPInstanceUID", f"instance{count}")))
        ds.save_as(partial / f"{name}.dcm", enforce_file_format=True)
        count += 1
    partial.rename(target)
    return count


def fetch_chunk(jobs: list[tuple[DicomwebServer, str, str, str]]) -> list[tuple[str, str]]:
    """:func:`fetch_series` over (server, study, series, root) jobs, in a worker process or
    a Ray task; returns (series, reason) for each series that could not be fetched."""
    failed = []
    for server, study, series, root in jobs:
        try:
            fetch_series(server, study, series, Path(root))
        except Exception as exc:  # noqa: BLE001 - one series must not stop the others
            failed.append((f"{study}/{series}", f"WADO-RS failed: {type(exc).__name__}: {exc}"))
    return failed
