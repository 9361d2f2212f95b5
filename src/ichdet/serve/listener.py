"""``ichdet listen``: a DICOM Storage SCP (pynetdicom) that queues studies as they arrive.

It answers C-ECHO and accepts CT Image Storage in the transfer syntaxes ichdet decodes; other
SOP classes are refused at association (the presentation context is rejected). Each instance is
written to ``dicom-inbox/<study>/<sop>.dcm`` (atomically, keeping its transfer syntax) before
the success status; a dataset that cannot be decoded or is not CT gets a failure status and the
association stays usable; a duplicate instance overwrites itself. A study is complete when none
of its instances arrived for ``quiet`` seconds: its folder becomes ``studies/<id>/files`` and a
job (origin ``dicom``) in the same store ``ichdet serve`` uses. After a restart, what is in the
inbox is dispatched after the quiet time. Log lines carry counts and internal ids only.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

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
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ichdet.serve.store import Store, new_id
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
    ):
        self.store, self.root, self.wake = store, root, wake
        self.inbox, self.studies = root / "dicom-inbox", root / "studies"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.quiet, self.host, self.port = quiet, host, port
        self.arrivals: dict[str, float] = {}
        self.lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(Verification)
        self.ae.add_supported_context(CTImageStorage, TRANSFER_SYNTAXES)
        self.ae.maximum_pdu_size = 0  # no limit: fewer PDUs per slice
        self.server: Any = None
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_ECHO, lambda _e: SUCCESS),
        ]
        self.server = self.ae.start_server(
            (self.host, self.port), block=False, evt_handlers=handlers
        )
        self.thread = threading.Thread(target=self._loop, name="ichdet-dicom", daemon=True)
        self.thread.start()
        log.info("DICOM listener %s on %s:%d", self.ae.ae_title, self.host, self.port)

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
        if self.thread:
            self.thread.join(timeout=10)

    def on_store(self, event: Any) -> int:
        """Write the instance, then answer: success only once it is on disk."""
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            modality, sop = str(ds.get("Modality", "")), str(ds.get("SOPInstanceUID", ""))
            study = str(ds.get("StudyInstanceUID", ""))
        except Exception:  # noqa: BLE001 - a malformed dataset must not break the association
            log.info("C-STORE: undecodable dataset refused")
            return UNREADABLE
        if modality != "CT" or not sop or not study:
            log.info("C-STORE: refused a dataset that is not a CT image (modality %r)", modality)
            return NOT_CT
        folder = self.inbox / path_component(study)
        with self.lock:  # never while its study is being dispatched
            try:
                folder.mkdir(exist_ok=True)
                with atomic_path(folder / f"{path_component(sop)}.dcm") as tmp:
                    ds.save_as(tmp, enforce_file_format=True)
            except OSError:
                log.warning("C-STORE: could not write an instance")
                return OUT_OF_RESOURCES
            self.arrivals[folder.name] = time.monotonic()
        return SUCCESS

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.dispatch_quiet()
            self.stopping.wait(0.1)

    def dispatch_quiet(self) -> None:
        now = time.monotonic()
        for folder in sorted(p for p in self.inbox.iterdir() if p.is_dir()):
            with self.lock:
                last = self.arrivals.setdefault(folder.name, now)  # seen first after a restart
                if now - last < self.quiet:
                    continue
                self.arrivals.pop(folder.name)
                self.dispatch(folder)

    def dispatch(self, folder: Path) -> None:
        """The study in ``folder`` becomes ``studies/<id>/files`` and a queued job."""
        for leftover in folder.glob(".*"):  # a write cut short by a crash
            leftover.unlink(missing_ok=True)
        files = len(list(folder.glob("*.dcm")))
        if not files:
            folder.rmdir()
            return
        study_id = new_id()
        target = self.studies / study_id
        target.mkdir(parents=True)
        write_text(target / ORIGIN_FILE, "dicom")
        folder.rename(target / "files")
        self.store.add(study_id, files, origin="dicom")
        self.wake.set()
        log.info("study %s received over DICOM (%d instances)", study_id, files)
