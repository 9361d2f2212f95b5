"""``ichdet listen``: a DICOM Storage SCP (pynetdicom) that queues studies as they arrive.

It answers C-ECHO and accepts CT Image Storage in the transfer syntaxes ichdet decodes; other
SOP classes are refused at association (the presentation context is rejected). Who may
associate, over TLS or not, and the limits are ``ichdet.serve.dicom_access``'s. An instance is
received into a temporary file (never held whole in memory), checked (size, a CT image with its
UIDs, the study's instance count, free disk space, room in the queue for a new study), then
written to ``dicom-inbox/<study>/<sop>.dcm`` atomically, keeping its transfer syntax, before the
success status: what is not on disk is never answered with success. A refused instance gets a
failure status and the association stays usable; a duplicate overwrites itself.

A study is complete when none of its instances arrived for ``quiet`` seconds: its folder becomes
``studies/<id>/files`` and a job (origin ``dicom``) in the same store ``ichdet serve`` uses.
Instances of a study that was already dispatched join it: a study waiting in the queue simply
has more files; a finished one is processed again, whole, as its next version (its SR then
supersedes the earlier one); a study being processed waits until it is done. After a restart,
what is in the inbox is dispatched after the quiet time. Log lines carry counts and internal
ids only.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ichdet.serve.dicom_access import DicomAccess, check_association
from ichdet.serve.store import Store, new_id
from ichdet.serve.supervise import Supervisor
from ichdet.util.atomic import atomic_path, write_text
from ichdet.util.names import path_component

log = logging.getLogger("ichdet.serve")
TRANSFER_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
SUCCESS, NOT_CT, UNREADABLE, OUT_OF_RESOURCES = 0x0000, 0xA900, 0xC210, 0xA700
ORIGIN_FILE = "origin"
#: what an association may carry beyond the instance cap before it is aborted mid-transfer
#: (command sets, PDU headers); an instance over the cap that arrives whole is refused
HEADER_MARGIN = 1 << 20


MAX_PDU = 1 << 20


def study_key(folder_name: str) -> str:
    """The key that matches later instances to a dispatched study (not the UID itself)."""
    return hashlib.sha256(folder_name.encode()).hexdigest()


class Listener:
    def __init__(
        self,
        store: Store,
        root: Path,
        wake: threading.Event,
        ae_title: str = "ICHDET",
        host: str = "127.0.0.1",
        port: int = 11112,
        quiet: float = 10.0,
        access: DicomAccess | None = None,
        room: Callable[[], int] = lambda: 1,
    ):
        self.store, self.root, self.wake = store, root, wake
        self.inbox, self.studies = root / "dicom-inbox", root / "studies"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.quiet, self.host, self.port, self.room = quiet, host, port, room
        self.access = access or DicomAccess(allow_any=True)
        self.arrivals: dict[str, float] = {}
        self.received: dict[int, int] = {}  # bytes per association since its last C-STORE
        self.counts: dict[str, int] = {}  # instances per inbox folder (the per-study cap)
        self.lock = threading.Lock()
        self.ae = _make_ae(ae_title, self.access)
        self.server: Any = None
        self.stopping = threading.Event()
        self.supervisor = Supervisor(self.stopping)

    def start(self) -> None:
        _config.STORE_RECV_CHUNKED_DATASET = True  # instances go to a file, not into memory
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, check_association, [self.access, self.ae.ae_title]),
            (evt.EVT_DATA_RECV, self.on_data),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_ECHO, lambda _e: SUCCESS),
        ]
        self.server = self.ae.start_server(
            (self.host, self.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=self.access.ssl_context(),
        )
        self.supervisor.spawn("dicom-dispatch", self.dispatch_quiet, pause=0.1)
        log.info("DICOM listener %s on %s:%d", self.ae.ae_title, self.host, self.port)

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
        self.supervisor.join(timeout=10)

    def on_data(self, event: Any) -> None:
        """Abort an association whose instance outgrows the cap while it is still arriving."""
        key = id(event.assoc)
        self.received[key] = self.received.get(key, 0) + len(event.data)
        if self.received[key] > self.access.limits.max_instance_bytes + HEADER_MARGIN:
            self.received.pop(key, None)
            log.warning("DICOM association aborted: an instance over the size cap")
            event.assoc.abort()

    def on_store(self, event: Any) -> int:
        """Check the instance, write it, then answer: success only once it is on disk."""
        self.received.pop(id(event.assoc), None)
        path = Path(event.dataset_path)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            modality, sop = str(ds.get("Modality", "")), str(ds.get("SOPInstanceUID", ""))
            study = str(ds.get("StudyInstanceUID", ""))
        except Exception:  # noqa: BLE001 - a malformed dataset must not break the association
            log.info("C-STORE: undecodable dataset refused")
            return UNREADABLE
        if modality != "CT" or not sop or not study:
            log.info("C-STORE: refused a dataset that is not a CT image (modality %r)", modality)
            return NOT_CT
        folder = self.inbox / path_component(study)
        problem = self.refusal(path, folder)
        if problem:
            log.warning("C-STORE: refused (%s)", problem)
            return OUT_OF_RESOURCES
        with self.lock:  # never while its study is being dispatched
            try:
                folder.mkdir(exist_ok=True)
                with atomic_path(folder / f"{path_component(sop)}.dcm") as tmp:
                    shutil.copyfile(path, tmp)
            except OSError:
                log.warning("C-STORE: could not write an instance")
                return OUT_OF_RESOURCES
            self.arrivals[folder.name] = time.monotonic()
            self.counts[folder.name] = self.counts.get(folder.name, 0) + 1
        return SUCCESS

    def refusal(self, path: Path, folder: Path) -> str:
        """Why an instance cannot be taken now ("" when it can)."""
        limits, size = self.access.limits, path.stat().st_size
        if size > limits.max_instance_bytes:
            return f"instance of {size} bytes over the cap"
        if shutil.disk_usage(self.inbox).free - size < limits.min_free_bytes:
            return "disk space below the floor"
        if "dicom-dispatch" in self.supervisor.down():
            return "the study dispatch is down"
        if not folder.is_dir():
            return "" if self.room() > 0 else "the queue is full"
        if folder.name not in self.counts:  # after a restart
            self.counts[folder.name] = sum(1 for _ in folder.glob("*.dcm"))
        if self.counts[folder.name] >= limits.max_instances_per_study:
            return "too many instances in one study"
        return ""

    def pending(self) -> int:
        """Studies received but not yet dispatched (they count against the queue bound)."""
        return sum(1 for p in self.inbox.iterdir() if p.is_dir())

    def dispatch_quiet(self) -> None:
        now = time.monotonic()
        for folder in sorted(p for p in self.inbox.iterdir() if p.is_dir()):
            with self.lock:
                last = self.arrivals.setdefault(folder.name, now)  # seen first after a restart
                if now - last < self.quiet:
                    continue
                if self.dispatch(folder):
                    self.arrivals.pop(folder.name, None)
                    self.counts.pop(folder.name, None)
                else:  # its study is being processed: try again in a second
                    self.arrivals[folder.name] = now - self.quiet + 1.0

    def dispatch(self, folder: Path) -> bool:
        """The study in ``folder`` becomes a queued job (or joins its earlier instances);
        False when that must wait (the study is being processed)."""
        for leftover in folder.glob(".*"):  # a write cut short by a crash
            leftover.unlink(missing_ok=True)
        files = sorted(folder.glob("*.dcm"))
        if not files:
            folder.rmdir()
            return True
        key = study_key(folder.name)
        job = self.store.by_key(key)
        if job is None:
            self._new_study(folder, key, len(files))
            return True
        if job.status == "queued" and self.store.move(job.id, ("queued",), "held"):
            count = self._merge(folder, job.id)
            self.store.move(job.id, ("held",), "queued", files=count)
        elif job.status in ("done", "failed"):
            count = self._merge(folder, job.id)
            if not self.store.reopen(job.id, count):
                return False
            log.info("study %s: %d late instances; read again, whole", job.id, len(files))
        else:
            return False
        self.wake.set()
        return True

    def _new_study(self, folder: Path, key: str, files: int) -> None:
        study_id = new_id()
        target = self.studies / study_id
        target.mkdir(parents=True)
        write_text(target / ORIGIN_FILE, "dicom")
        write_text(target / "owner", self.store.owner)
        folder.rename(target / "files")
        self.store.add(study_id, files, origin="dicom", study_key=key)
        self.wake.set()
        log.info("study %s received over DICOM (%d instances)", study_id, files)

    def _merge(self, folder: Path, study_id: str) -> int:
        """Move ``folder``'s instances into the study's files (a duplicate replaces itself)."""
        target = self.studies / study_id / "files"
        for path in folder.glob("*.dcm"):
            path.replace(target / path.name)
        folder.rmdir()
        return sum(1 for _ in target.glob("*.dcm"))


def _make_ae(title: str, access: DicomAccess) -> AE:
    ae = AE(ae_title=title)
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, TRANSFER_SYNTAXES)
    ae.maximum_pdu_size = MAX_PDU  # a slice in few PDUs; an oversized one is cut off early
    limits = access.limits
    ae.maximum_associations = limits.max_associations
    ae.acse_timeout = limits.acse_timeout  # an idle connection that sends no request is dropped
    ae.dimse_timeout = limits.dimse_timeout
    ae.network_timeout = limits.network_timeout
    return ae
