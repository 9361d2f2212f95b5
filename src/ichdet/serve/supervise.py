"""Supervised threads: every loop of the service (workers, DICOM dispatch, outbox, heartbeat)
runs one step at a time under a supervisor. A step that raises is logged (the exception's type
only: messages can carry header values) and the loop starts again after a back-off (1, 2, 4 ...
at most 30 s); while the last step of a part failed, or its thread is gone, the part is down and
``/healthz`` answers 503 naming it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("ichdet.serve")
MAX_BACKOFF = 30.0


@dataclass
class Part:
    name: str
    thread: threading.Thread
    failures: int = 0  # consecutive
    last_error: str = ""

    @property
    def up(self) -> bool:
        return self.failures == 0 and self.thread.is_alive()


class Supervisor:
    def __init__(self, stopping: threading.Event):
        self.stopping = stopping
        self.parts: dict[str, Part] = {}

    def spawn(self, name: str, step: Callable[[], object], pause: float = 0.0) -> Part:
        """Run ``step`` again and again (``pause`` seconds apart) until stopping."""
        thread = threading.Thread(target=self._run, args=(name, step, pause), daemon=True)
        thread.name = f"ichdet-{name}"
        part = self.parts[name] = Part(name, thread)
        thread.start()
        return part

    def _run(self, name: str, step: Callable[[], object], pause: float) -> None:
        part = self.parts[name]
        while not self.stopping.is_set():
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - a part that fails is restarted, not lost
                part.failures += 1
                part.last_error = type(exc).__name__
                delay = min(MAX_BACKOFF, 2.0 ** (part.failures - 1))
                log.warning("%s failed (%s); restarting in %.0f s", name, part.last_error, delay)
                self.stopping.wait(delay)
                continue
            if part.failures:
                log.info("%s is running again", name)
            part.failures = 0
            if pause:
                self.stopping.wait(pause)

    def down(self) -> dict[str, str]:
        """The parts that are down, with why."""
        return {
            p.name: p.last_error or "thread ended"
            for p in self.parts.values()
            if not p.up and not self.stopping.is_set()
        }

    def join(self, timeout: float = 30.0) -> None:
        for part in self.parts.values():
            part.thread.join(timeout=timeout)
