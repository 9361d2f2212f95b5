"""The service every entry point shares (``ichdet serve``, ``ichdet listen``, both at once):
settings, the model, the job store, the workers, the metrics, and the DICOM side (listener,
results, outbox) when configured."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ichdet.inference.runners import Runner
from ichdet.selection.choose import SelectionOptions
from ichdet.serve.metrics import Metrics
from ichdet.serve.outbox import Destination, Outbox
from ichdet.serve.results import DicomResults
from ichdet.serve.store import Store
from ichdet.serve.worker import Processor

_ID = re.compile(r"[0-9a-f]{32}")


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


class Context:
    def __init__(self, runner: Runner, settings: Settings):
        from ichdet.serve.listener import Listener

        self.runner, self.settings = runner, settings
        settings.store.mkdir(parents=True, exist_ok=True)
        self.studies.mkdir(exist_ok=True)
        self.store = Store(f"sqlite:///{settings.store / 'ichdet.db'}")
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
        self.outbox = None
        if settings.send_to:
            destination = Destination.parse(settings.send_to)
            self.outbox = Outbox(settings.store / "outbox", destination, settings.ae_title)
        self.processor.after.append(DicomResults(runner, self.store, self.studies, self.outbox))
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
            )

    @property
    def studies(self) -> Path:
        return self.settings.store / "studies"

    def start(self) -> None:
        self.sweep()
        self.processor.start()
        if self.outbox:
            self.outbox.start()
        if self.listener:
            self.listener.start()

    def stop(self) -> None:
        if self.listener:
            self.listener.stop()
        self.processor.stop()
        if self.outbox:
            self.outbox.stop()

    def sweep(self) -> None:
        """At start: remove half-received uploads; a study folder whose job row was never
        written (a crash between the two) is queued now, so nothing received is lost."""
        for tmp in self.settings.store.glob("incoming-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        for folder in self.studies.iterdir():
            if not _ID.fullmatch(folder.name) or self.store.get(folder.name) is not None:
                continue
            files = len(list((folder / "files").glob("*.dcm")))
            if not files:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            origin_file = folder / "origin"
            origin = origin_file.read_text().strip() if origin_file.is_file() else "upload"
            self.store.add(folder.name, files, origin="dicom" if origin == "dicom" else "upload")
