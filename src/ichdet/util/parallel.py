"""Chunked work over processes, in order, with progress."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def map_chunks(
    func: Callable[[list[T]], list[Any]],
    items: Sequence[T],
    workers: int = 1,
    max_chunk: int = 256,
    progress: Callable[[int], None] | None = None,
) -> list[Any]:
    """``func`` over chunks of ``items`` (in ``workers`` processes when > 1); results in order.

    ``func`` takes a list of items and returns a list; the lists are concatenated. Chunks are
    small enough to give every worker several, so progress moves and the load evens out.
    """
    size = max(1, min(max_chunk, math.ceil(len(items) / max(1, workers * 8))))
    chunks = [list(items[i : i + size]) for i in range(0, len(items), size)]
    results: list[Any] = []
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for chunk, part in zip(chunks, pool.map(func, chunks), strict=True):
                results += part
                progress and progress(len(chunk))
    else:
        for chunk in chunks:
            results += func(chunk)
            progress and progress(len(chunk))
    return results
