"""The Ray engine: ``--engine ray`` runs index, prepare and predict on a Ray cluster.

Ray comes with the ``distributed`` extra (``pip install 'ichdet[distributed]'``); nothing here
imports it until a Ray run starts, so the local engine (the default) never loads it.

``address``: None starts a Ray instance on this machine for the run (``workers`` CPUs);
``"auto"`` joins the cluster this machine belongs to (``ray start`` / KubeRay);
``ray://HEAD:10001`` connects through Ray Client. A Ray session that is already initialised
in this process is used as it is.

Work sent to the cluster must find ichdet installed on every node (the same version), and the
images at the same paths on every node (a shared file system) unless they come by DICOMweb.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")

ENGINES = ("local", "ray")
INSTALL_HINT = "the Ray engine needs Ray: pip install 'ichdet[distributed]'"
#: A task is run again this often when its worker dies, before its items are tried alone.
TASK_RETRIES = 3


@dataclass(frozen=True)
class Engine:
    """Where the work of one command runs: ``local`` (this machine's process pool) or ``ray``."""

    name: str = "local"
    address: str | None = None  #: ray only: None (a local instance), "auto", "ray://HOST:PORT"

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ValueError(f"--engine takes {' or '.join(ENGINES)}, not {self.name!r}")
        if self.address and self.name != "ray":
            raise ValueError("--address needs --engine ray")

    @property
    def is_ray(self) -> bool:
        return self.name == "ray"


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return ray


def connect(engine: Engine, workers: int = 1) -> Any:
    """The ``ray`` module, connected to the engine's cluster (started on this machine with
    ``workers`` CPUs when no address is given; every CPU when ``workers`` <= 1)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if engine.address:
        ray.init(address=engine.address, log_to_driver=False)
    else:
        cpus = workers if workers > 1 else None
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return ray


def cluster_slots(ray: Any, per_replica: float, resource: str = "CPU") -> int:
    """How many replicas of ``per_replica`` ``resource`` the cluster holds (at least 1)."""
    total = float(ray.cluster_resources().get(resource, 0))
    return max(1, int(total // per_replica)) if per_replica > 0 else 1


def mapper(engine: Engine, workers: int = 1) -> Callable[..., list[Any]]:
    """A function with the signature of :func:`ichdet.util.parallel.map_chunks` that runs on
    ``engine``."""
    if not engine.is_ray:
        from ichdet.util.parallel import map_chunks

        return map_chunks
    return partial(ray_map_chunks, engine=engine)


def ray_map_chunks(
    func: Callable[[list[T]], list[Any]],
    items: Sequence[T],
    workers: int = 1,
    max_chunk: int = 256,
    progress: Callable[[int], None] | None = None,
    on_crash: Callable[[T], list[Any]] | None = None,
    engine: Engine = Engine("ray"),
) -> list[Any]:
    """:func:`ichdet.util.parallel.map_chunks` as Ray tasks: chunks of ``items`` spread over
    the cluster, results in order. A task whose worker dies is retried (``TASK_RETRIES``);
    a chunk that keeps killing its worker is run item by item, each alone, so the one poison
    item is found and given to ``on_crash``; the rest of its chunk is kept."""
    ray = connect(engine, workers)
    slots = cluster_slots(ray, 1.0)
    size = max(1, min(max_chunk, math.ceil(len(items) / (slots * 8))))
    chunks = [list(items[i : i + size]) for i in range(0, len(items), size)]
    task = ray.remote(_apply).options(max_retries=TASK_RETRIES, num_cpus=1)
    pending = {task.remote(func, chunk): k for k, chunk in enumerate(chunks)}
    done: dict[int, list[Any]] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        k = pending.pop(ready[0])
        try:
            done[k] = ray.get(ready[0])
        except ray.exceptions.WorkerCrashedError:
            done[k] = _isolated(ray, func, chunks[k], on_crash)
        progress and progress(len(chunks[k]))
    return [r for k in range(len(chunks)) for r in done[k]]


def _apply(func: Callable[[list[T]], list[Any]], chunk: list[T]) -> list[Any]:
    """The body of a Ray task: ``func`` may be a partial, which Ray cannot wrap itself."""
    return func(chunk)


def _isolated(
    ray: Any,
    func: Callable[[list[T]], list[Any]],
    chunk: list[T],
    on_crash: Callable[[T], list[Any]] | None,
) -> list[Any]:
    """``func`` on each item of ``chunk`` alone, without retries; a crash becomes
    ``on_crash(item)``."""
    task = ray.remote(_apply).options(max_retries=0, num_cpus=1)
    refs = [task.remote(func, [item]) for item in chunk]
    out: list[Any] = []
    for item, ref in zip(chunk, refs, strict=True):
        try:
            out += ray.get(ref)
        except ray.exceptions.WorkerCrashedError:
            out += on_crash(item) if on_crash else []
    return out
