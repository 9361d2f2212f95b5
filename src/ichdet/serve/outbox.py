"""Results waiting to be sent to a DICOM destination (C-STORE), persisted on disk.

``outbox/<study id>/`` holds the files and ``state.json`` (attempts, next try). A thread sends
what is due; a destination that is down gets the entry back with exponential back-off (2, 4,
8, ... seconds, at most 5 minutes), and a restart picks up where the last run stopped.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom import AE

from ichdet.util.atomic import write_text

log = logging.getLogger("ichdet.serve")
MAX_BACKOFF = 300.0


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AET@HOST:PORT``."""
        aet, at, rest = text.partition("@")
        host, colon, port = rest.rpartition(":")
        if not (at and colon and aet and host and port.isdigit() and len(aet) <= 16):
            raise ValueError(f"{text!r}: expected AET@HOST:PORT (AE title of at most 16)")
        return cls(aet, host, int(port))


class Outbox:
    def __init__(self, root: Path, destination: Destination, ae_title: str = "ICHDET"):
        self.root, self.destination, self.ae_title = root, destination, ae_title
        self.root.mkdir(parents=True, exist_ok=True)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def put(self, study_id: str, files: list[Path]) -> None:
        """Queue ``files`` for sending (copied in; the entry counts once ``state.json`` exists)."""
        folder = self.root / study_id
        folder.mkdir(exist_ok=True)
        for path in files:
            shutil.copy(path, folder / path.name)
        write_text(folder / "state.json", json.dumps({"attempts": 0, "next": 0.0}))

    def pending(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/state.json"))

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="ichdet-outbox", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread:
            self.thread.join(timeout=30)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.send_due()
            self.stopping.wait(0.2)

    def send_due(self) -> None:
        for study_id in self.pending():
            folder = self.root / study_id
            state = json.loads((folder / "state.json").read_text())
            if state["next"] > time.time():
                continue
            try:
                self._send(sorted(folder.glob("*.dcm")))
            except (OSError, RuntimeError, ValueError) as exc:
                state["attempts"] += 1
                delay = min(MAX_BACKOFF, 2.0 ** state["attempts"])
                state["next"] = time.time() + delay
                write_text(folder / "state.json", json.dumps(state))
                log.info("study %s: sending failed (%s); retry in %.0f s", study_id, exc, delay)
                continue
            shutil.rmtree(folder, ignore_errors=True)
            log.info("study %s: results sent", study_id)

    def _send(self, files: list[Path]) -> None:
        datasets = [pydicom.dcmread(p) for p in files]
        ae = AE(ae_title=self.ae_title)
        syntaxes: dict[str, set[str]] = {}
        for ds in datasets:
            syntaxes.setdefault(str(ds.SOPClassUID), set()).add(str(ds.file_meta.TransferSyntaxUID))
        for uid, found in syntaxes.items():
            ae.add_requested_context(uid, sorted(found))
        d = self.destination
        assoc = ae.associate(d.host, d.port, ae_title=d.ae_title)
        if not assoc.is_established:
            raise RuntimeError(f"no association with {d.ae_title}@{d.host}:{d.port}")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                if not status or status.Status != 0x0000:
                    code = getattr(status, "Status", None)
                    raise RuntimeError(f"C-STORE refused (status {code})")
        finally:
            assoc.release()
