"""Prometheus metrics of the service (the Prometheus client library, one registry per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ichdet.serve.store import Store


class Metrics:
    """Queue length, studies processed and failed, refused uploads, processing latency."""

    def __init__(self, store: Store):
        self.registry = CollectorRegistry()
        queue = Gauge("ichdet_queue_length", "studies waiting", registry=self.registry)
        queue.set_function(lambda: store.count("queued"))
        self.processed = Counter(
            "ichdet_studies_processed", "studies predicted", registry=self.registry
        )
        self.failed = Counter(
            "ichdet_studies_failed", "studies that failed", registry=self.registry
        )
        self.refused = Counter(
            "ichdet_uploads_refused", "uploads answered 4xx", ["status"], registry=self.registry
        )
        self.latency = Histogram(
            "ichdet_study_seconds",
            "seconds from a worker taking a study to its result",
            buckets=(0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )

    def done(self, _study_id: str, seconds: float, ok: bool) -> None:
        (self.processed if ok else self.failed).inc()
        if ok:
            self.latency.observe(seconds)
