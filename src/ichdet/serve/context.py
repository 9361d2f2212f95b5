"""What every route needs: settings, the model, the store, the workers, the metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ichdet.inference.runners import Runner
from ichdet.serve.metrics import Metrics
from ichdet.serve.store import Store
from ichdet.serve.worker import Processor


@dataclass
class Settings:
    store: Path
    workers: int = 1
    token: str | None = None
    max_upload_bytes: int = 2 * 2**30
    queue_size: int = 100
    retention_days: float = 0.0  # 0: keep everything


@dataclass
class Context:
    settings: Settings
    runner: Runner
    store: Store
    processor: Processor
    metrics: Metrics

    @property
    def studies(self) -> Path:
        return self.settings.store / "studies"
