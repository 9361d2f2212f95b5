"""The service every entry point shares (``ichdet serve``, ``ichdet listen``, both at once):
settings, the model, the job store, the workers, the metrics, and the DICOM side (listener,
results, outbox) when configured."""

from __future__ import annotations

import logging
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from ichdet.dicomweb.client import DicomwebServer
from ichdet.inference.runners import Runner
from ichdet.selection.choose import SelectionOptions
from ichdet.serve.audit import Audit
from ichdet.serve.dicom_access import DicomAccess
from ichdet.serve.metrics import Metrics
from ichdet.serve.outbox import Destination, Outbox
from ichdet.serve.results import DicomResults
from ichdet.serve.store import Store
from ichdet.serve.worker import Processor
from ichdet.util.names import path_component

if TYPE_CHECKING:
    from ichdet.serve.dicomweb_poll import DicomwebPoller

log = logging.getLogger("ichdet.serve")
_ID = re.compile(r"[0-9a-f]{32}")
OWNER_FILE = "owner"


@dataclass
class Settings:
    store: Path
    workers: int = 1
    token: str | None = None
    max_upload_bytes: int = 2 * 2**30
    queue_size: int = 100
    retention_days: float = 0.0  # 0: keep everything
    dicom_port: int | None = None  # the DICOM listener, when set
    dicom_host: str = "127.0.0.1"
    ae_title: str = "ICHDET"
    quiet_seconds: float = 10.0
    send_to: str | None = None  # AET@HOST:PORT for the SR and Secondary Captures
    selection: SelectionOptions | None = None  # which series are read (predict's default)
    dicom_access: DicomAccess = field(default_factory=lambda: DicomAccess(allow_any=True))
    database: str | None = None  # a SQLAlchemy URL; None: SQLite in the store folder
    server_id: str | None = None  # the owner of this server's jobs; None: host name + port
    allowed_hosts: tuple[str, ...] = ()  # Host header names beyond the bind address/localhost
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    dicomweb: DicomwebServer | None = None  # a DICOMweb server watched for new studies
    poll_seconds: float = 60.0
    settle_seconds: float = 60.0  # a DICOMweb study is read once its size is this long unchanged

    @property
    def owner(self) -> str:
        if self.server_id:
            return self.server_id[:64]
        return f"{socket.gethostname()}:{self.http_port}:{self.dicom_port or 0}"[:64]


class Context:
    def __init__(self, runner: Runner, settings: Settings):
        from ichdet.serve.listener import Listener

        self.runner, self.settings = runner, settings
        settings.store.mkdir(parents=True, exist_ok=True)
        settings.store.chmod(0o700)  # patient data: the service's user only
        self.studies.mkdir(exist_ok=True)
        url = settings.database or f"sqlite:///{settings.store / 'ichdet.db'}"
        self.store = Store(url, owner=settings.owner)
        self.audit = Audit(self.store)
        self.metrics = Metrics(self.store)
        self.processor = Processor(
            runner,
            self.store,
            self.studies,
            settings.workers,
            self.metrics.done,
            settings.retention_days,
            settings.selection,
        )
        self.processor.in_done.append(self._audit_done)
        self.outbox = None
        if settings.send_to:
            destination = Destination.parse(settings.send_to)
            self.outbox = Outbox(
                settings.store / "outbox", destination, settings.ae_title, settings.owner
            )
            self.processor.on_delete.append(self.outbox.remove)
        self.processor.before_done.append(
            DicomResults(runner, self.store, self.studies, self.outbox)
        )
        self.listener = None
        if settings.dicom_port is not None:
            self.listener = Listener(
                self.store,
                settings.store,
                self.processor.wake,
                settings.ae_title,
                settings.dicom_host,
                settings.dicom_port,
                settings.quiet_seconds,
                settings.dicom_access,
                self.queue_room,
            )
        self.poller = self._poller()

    @property
    def studies(self) -> Path:
        return self.settings.store / "studies"

    @property
    def incoming_prefix(self) -> str:
        """This server's temporary upload folders (``incoming-<owner>-*``)."""
        return f"incoming-{path_component(self.settings.owner)}-"

    def queue_room(self) -> int:
        """Studies that may still be queued: one bound for HTTP uploads and DICOM studies."""
        pending = self.listener.pending() if self.listener else 0
        return self.settings.queue_size - self.store.count("queued") - pending

    def _poller(self) -> DicomwebPoller | None:
        if self.settings.dicomweb is None:
            return None
        from ichdet.serve.dicomweb_poll import DicomwebPoller

        return DicomwebPoller(
            self.settings.dicomweb,
            self.store,
            self.settings.store,
            self.processor.wake,
            self.settings.poll_seconds,
            self.settings.selection,
            self.runner.slice_spacing,
            self.queue_room,
            settle=self.settings.settle_seconds,
        )

    def down(self) -> dict[str, str]:
        """The parts of the service that are down (``/healthz`` answers 503 while any is)."""
        parts = [self.processor.supervisor]
        parts += [self.listener.supervisor] if self.listener else []
        parts += [self.poller.supervisor] if self.poller else []
        parts += [self.outbox.supervisor] if self.outbox else []
        return {k: v for p in parts for k, v in p.down().items()}

    def _audit_done(self, session: Session, study_id: str) -> None:
        self.audit.add(session, f"server:{self.settings.owner}", "done", study_id)

    def start(self) -> None:
        self.sweep()
        self.processor.start()
        if self.outbox:
            self.outbox.start()
        if self.listener:
            self.listener.start()
        if self.poller:
            self.poller.start()

    def stop(self) -> None:
        if self.poller:
            self.poller.stop()
        if self.listener:
            self.listener.stop()
        self.processor.stop()
        if self.outbox:
            self.outbox.stop()

    def sweep(self) -> None:
        """At start: remove this server's half-received uploads; a study folder of this server
        whose job row was never written (a crash between the two) is queued now, so nothing
        received is lost. Other servers' folders are theirs to sweep."""
        for tmp in self.settings.store.glob(self.incoming_prefix + "*"):
            shutil.rmtree(tmp, ignore_errors=True)
        for study_id in self.store.ids("held"):  # a merge of late instances cut short
            self.store.move(study_id, ("held",), "queued")
        for folder in self.studies.iterdir():
            if not _ID.fullmatch(folder.name) or self.store.get(folder.name) is not None:
                continue
            owner = folder / OWNER_FILE
            if owner.is_file() and owner.read_text() != self.settings.owner:
                continue
            files = len(list((folder / "files").glob("*.dcm")))
            if not files:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            self.store.add(folder.name, files, *_origin(folder))


def _origin(folder: Path) -> tuple[str, str | None]:
    """(origin, study key) of a study folder whose job row is missing."""
    origin_file, key_file = folder / "origin", folder / "study_key"
    origin = origin_file.read_text().strip() if origin_file.is_file() else "upload"
    key = key_file.read_text().strip()[:64] if key_file.is_file() else None
    return (origin if origin in ("dicom", "dicomweb") else "upload"), key
