"""Chunked work over processes, in order, with progress, surviving workers that die.

A worker killed by the kernel (out of memory) or by a crashing decoder breaks the whole process
pool. Then the chunk that was running is run again item by item, each in a fresh one-process
pool, so the one poison item is found and reported through ``on_crash``; the other chunks go on
in a new pool and the work already done is kept.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

T = TypeVar("T")


def _leave_inherited_objects_alone() -> None:
    """First thing in every worker: objects inherited through fork go to gc's permanent
    generation, so the child never runs their destructors. A parent's ONNX Runtime session or
    torch object left in a reference cycle would otherwise be collected in the child, where
    its destructor waits for threads that were not forked: the worker hangs forever."""
    gc.freeze()


def process_pool(workers: int) -> ProcessPoolExecutor:
    """The one way ichdet starts worker processes (see :func:`_leave_inherited_objects_alone`)."""
    return ProcessPoolExecutor(max_workers=workers, initializer=_leave_inherited_objects_alone)


#: Why an item is reported when the process working on it died.
WORKER_DIED = "the worker process died on this file (out of memory, or a decoder crash)"


def map_chunks(
    func: Callable[[list[T]], list[Any]],
    items: Sequence[T],
    workers: int = 1,
    max_chunk: int = 256,
    progress: Callable[[int], None] | None = None,
    on_crash: Callable[[T], list[Any]] | None = None,
) -> list[Any]:
    """``func`` over chunks of ``items`` (in ``workers`` processes when > 1); results in order.

    ``func`` takes a list of items and returns a list; the lists are concatenated. Chunks are
    small enough to give every worker several, so progress moves and the load evens out.
    ``on_crash(item)`` gives the results for an item whose worker died (default: none).
    """
    size = max(1, min(max_chunk, math.ceil(len(items) / max(1, workers * 8))))
    chunks = [list(items[i : i + size]) for i in range(0, len(items), size)]
    if workers <= 1 or len(chunks) <= 1:
        results: list[Any] = []
        for chunk in chunks:
            results += func(chunk)
            progress and progress(len(chunk))
        return results
    done: dict[int, list[Any]] = {}
    todo = list(range(len(chunks)))
    while todo:
        crashed, todo = _run_pool(func, chunks, todo, workers, done, progress)
        if crashed is not None:
            done[crashed] = run_isolated(func, chunks[crashed], on_crash)
            progress and progress(len(chunks[crashed]))
    return [r for i in range(len(chunks)) for r in done[i]]


def _run_pool(
    func: Callable[[list[T]], list[Any]],
    chunks: list[list[T]],
    todo: list[int],
    workers: int,
    done: dict[int, list[Any]],
    progress: Callable[[int], None] | None,
) -> tuple[int | None, list[int]]:
    """Run ``todo`` chunks in one pool; returns (a chunk whose worker died, chunks left)."""
    with process_pool(workers) as pool:
        futures: list[tuple[int, Future]] = [(i, pool.submit(func, chunks[i])) for i in todo]
        for k, (i, future) in enumerate(futures):
            try:
                done[i] = future.result()
            except BrokenProcessPool:
                left = []
                for j, later in futures[k + 1 :]:
                    if _finished(later, j, done):
                        progress and progress(len(chunks[j]))
                    else:
                        left.append(j)
                return i, left
            progress and progress(len(chunks[i]))
    return None, []


def _finished(future: Future, index: int, done: dict[int, list[Any]]) -> bool:
    """Keep the result of a chunk that completed before the pool broke."""
    if future.done() and not future.cancelled() and future.exception() is None:
        done[index] = future.result()
        return True
    return False


def run_isolated(
    func: Callable[[list[T]], list[Any]],
    chunk: list[T],
    on_crash: Callable[[T], list[Any]] | None,
) -> list[Any]:
    """``func`` on each item alone in a fresh one-process pool; a crash becomes ``on_crash``."""
    out: list[Any] = []
    for item in chunk:
        with process_pool(1) as pool:
            try:
                out += pool.submit(func, [item]).result()
            except BrokenProcessPool:
                out += on_crash(item) if on_crash else []
    return out
