"""Results waiting to be sent to a DICOM destination (C-STORE), persisted on disk.

``outbox/<study id>/`` holds the files and ``state.json`` (attempts, next try); an entry is
written whole beside the others, then renamed into place (a newer result of the same study
replaces a pending one). A thread sends what is due: it first claims the entry by renaming it
to ``<study id>.sending.<owner>`` (atomic: of several servers sharing the store, one wins), so
nothing is sent twice; a destination that is down gets the entry back with exponential back-off
(2, 4, 8, ... seconds, at most 5 minutes). At start, a server puts back the entries it was
sending when it died (its own only), so a restart picks up where the last run stopped.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom import AE

from ichdet.serve.supervise import Supervisor
from ichdet.util.atomic import write_text
from ichdet.util.names import path_component

log = logging.getLogger("ichdet.serve")
MAX_BACKOFF = 300.0


def _is_entry(folder: Path) -> bool:
    return "." not in folder.name


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
    def __init__(
        self, root: Path, destination: Destination, ae_title: str = "ICHDET", owner: str = "local"
    ):
        self.root, self.destination, self.ae_title = root, destination, ae_title
        self.owner = path_component(owner)
        self.root.mkdir(parents=True, exist_ok=True)
        self.stopping = threading.Event()
        self.supervisor = Supervisor(self.stopping)

    def put(self, study_id: str, files: list[Path]) -> None:
        """Queue ``files`` for sending, replacing an entry of the study still waiting."""
        staging = self.root / f".{study_id}.{uuid.uuid4().hex}"
        staging.mkdir()
        for path in files:
            shutil.copy(path, staging / path.name)
        write_text(staging / "state.json", json.dumps({"attempts": 0, "next": 0.0}))
        target = self.root / study_id
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)

    def remove(self, study_id: str) -> None:
        """A deleted study's entries (patient data): waiting, or being sent by this server."""
        for folder in (self.root / study_id, self._sending(study_id)):
            shutil.rmtree(folder, ignore_errors=True)

    def pending(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/state.json") if _is_entry(p.parent))

    def _sending(self, study_id: str) -> Path:
        return self.root / f"{study_id}.sending.{self.owner}"

    def start(self) -> None:
        for claimed in self.root.glob(f"*.sending.{self.owner}"):  # cut short by a crash
            study_id = claimed.name.split(".")[0]
            if (self.root / study_id).exists():  # a newer result waits already
                shutil.rmtree(claimed, ignore_errors=True)
            else:
                claimed.rename(self.root / study_id)
        self.supervisor.spawn("outbox", self.send_due, pause=0.2)

    def stop(self) -> None:
        self.stopping.set()
        self.supervisor.join(timeout=30)

    def send_due(self) -> None:
        for study_id in self.pending():
            state = json.loads((self.root / study_id / "state.json").read_text())
            if state["next"] > time.time():
                continue
            claimed = self._sending(study_id)
            try:
                (self.root / study_id).rename(claimed)
            except OSError:  # another server took it, or it was deleted
                continue
            try:
                self._send(sorted(claimed.glob("*.dcm")))
            except (OSError, RuntimeError, ValueError) as exc:
                state["attempts"] += 1
                delay = min(MAX_BACKOFF, 2.0 ** state["attempts"])
                state["next"] = time.time() + delay
                write_text(claimed / "state.json", json.dumps(state))
                self._give_back(claimed, study_id)
                log.info("study %s: sending failed (%s); retry in %.0f s", study_id, exc, delay)
                continue
            shutil.rmtree(claimed, ignore_errors=True)
            log.info("study %s: results sent", study_id)

    def _give_back(self, claimed: Path, study_id: str) -> None:
        if (self.root / study_id).exists():  # a newer result arrived meanwhile
            shutil.rmtree(claimed, ignore_errors=True)
        else:
            claimed.rename(self.root / study_id)

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
