"""Model inputs for prediction: each series decoded in chunks, ahead of the model, in workers.

Memory is bounded: a series is decoded in chunks of at most ``CHUNK_SLICES`` slices (plus the
``context`` neighbours on each side that the chunk's edge slices need), and at most ``depth``
chunks are in flight, so a 5,000-slice series or a wide ``--workers`` never holds more than
``depth x (CHUNK_SLICES + 2 x context)`` slices. A worker that dies (out of memory, a decoder
crash) breaks the pool: the chunk is then decoded slice by slice in fresh one-process pools to
find the file that kills it, which is reported; the rest of the run goes on in a new pool.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ichdet.data.cache import CacheSettings
from ichdet.data.prepare import dicom_stack, hu_stack, image_stack, slab_stack
from ichdet.dicom.read import DicomError
from ichdet.util.memory import reuse_freed_memory
from ichdet.util.parallel import WORKER_DIED, process_pool

Row = tuple[str, str, str]  # image_id, source, kind ("slab": source is a JSON list of slices)
Decoded = tuple[list[str], np.ndarray | None, list[tuple[str, str]]]

#: Slices decoded at once from one series (256 px, 3 windows, context 1: ~450 MiB at most).
CHUNK_SLICES = 256


@dataclass(frozen=True)
class Chunk:
    """Rows of one series to decode; only ``rows[keep_from:keep_to]`` are output (the rest are
    neighbours that give the edge slices their context)."""

    rows: list[Row]
    keep_from: int
    keep_to: int
    known: dict[str, np.ndarray] = field(default_factory=dict)  #: HU decoded already, by source


def frame_rows(frame: pd.DataFrame) -> list[Row]:
    """Decode rows of index / read-plan rows (in order): a slab row's source is its slices."""
    kinds = frame["kind"] if "kind" in frame else pd.Series("dicom", index=frame.index)
    slabs = frame["slab_sources"] if "slab_sources" in frame else pd.Series("", frame.index)
    return [
        (str(i), str(sl) if k == "slab" else str(s), str(k))
        for i, s, k, sl in zip(frame["image_id"], frame["source"], kinds, slabs, strict=True)
    ]


def display_source(row: Row) -> str:
    """The file that shows a row: a slab's middle slice (the instance it is named by)."""
    if row[2] != "slab":
        return row[1]
    sources = json.loads(row[1])
    return str(sources[len(sources) // 2])


def series_chunks(
    rows: list[Row],
    context: int,
    size: int = CHUNK_SLICES,
    known: dict[str, np.ndarray] | None = None,
) -> list[Chunk]:
    """A series (rows in z order) cut into chunks of ``size`` kept slices with margins; each
    chunk carries the slices of ``known`` (decoded already) that it reads."""
    chunks = []
    for start in range(0, len(rows), size):
        stop = min(len(rows), start + size)
        low, high = max(0, start - context), min(len(rows), stop + context)
        part = rows[low:high]
        sources = {s for r in part for s in _sources(r)}
        mine = {s: hu for s, hu in (known or {}).items() if s in sources}
        chunks.append(Chunk(part, start - low, stop - low, mine))
    return chunks


def _sources(row: Row) -> list[str]:
    return [str(s) for s in json.loads(row[1])] if row[2] == "slab" else [row[1]]


def _stack(
    source: str, kind: str, settings: CacheSettings, known: dict[str, np.ndarray]
) -> np.ndarray:
    """One row's model input; slices in ``known`` (the selection's image check decoded them)
    are not decoded again."""
    if kind == "slab":
        return slab_stack(source, settings, known)
    if kind != "image" and source in known:
        return hu_stack(known[source], settings)
    return image_stack(source, settings) if kind == "image" else dicom_stack(source, settings)


def series_inputs(
    rows: list[Row],
    settings: CacheSettings,
    context: int,
    known: dict[str, np.ndarray] | None = None,
) -> Decoded:
    """Decode one series (rows in z order) -> (image ids, model inputs, errors)."""
    reuse_freed_memory()
    stacks, ids, errors = [], [], []
    for image_id, source, kind in rows:
        try:
            stacks.append(_stack(source, kind, settings, known or {}))
            ids.append(image_id)
        except DicomError as exc:  # a slab's error names its slice
            errors.append((source, str(exc) if kind == "slab" else exc.reason))
        except (ValueError, OSError) as exc:
            errors.append((source, str(exc)))
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a batch
            errors.append((source, f"{type(exc).__name__}: {exc}"))
    if not stacks:
        return [], None, errors
    volume = np.stack(stacks)  # N x C x H x W, in slice order
    if context:
        n = len(volume)
        neighbours = [
            volume[np.clip(np.arange(n) + o, 0, n - 1)] for o in range(-context, context + 1)
        ]
        volume = np.concatenate(neighbours, axis=1)
    return ids, volume, errors


def chunk_inputs(chunk: Chunk, settings: CacheSettings, context: int) -> Decoded:
    """:func:`series_inputs` of a chunk, keeping only its own slices (and their errors)."""
    ids, volume, errors = series_inputs(chunk.rows, settings, context, chunk.known)
    own = chunk.rows[chunk.keep_from : chunk.keep_to]
    own_ids, own_sources = {r[0] for r in own}, {r[1]: display_source(r) for r in own}
    errors = [(own_sources[e[0]], e[1]) for e in errors if e[0] in own_sources]
    if volume is None:
        return [], None, errors
    keep = [i for i, image_id in enumerate(ids) if image_id in own_ids]
    return [ids[i] for i in keep], (volume[keep] if keep else None), errors


def _isolate(chunk: Chunk, settings: CacheSettings, context: int) -> Decoded:
    """After a worker died on ``chunk``: find the slices that kill a process, one per fresh
    pool, then decode the chunk without them (in a fresh pool too)."""
    deadly = set()
    for row in chunk.rows:
        with process_pool(1) as pool:
            try:
                pool.submit(series_inputs, [row], settings, 0).result()
            except BrokenProcessPool:
                deadly.add(row)
    rows = [r for r in chunk.rows if r not in deadly]
    own = chunk.rows[chunk.keep_from : chunk.keep_to]
    kept = [r for r in own if r not in deadly]
    errors = [(display_source(r), WORKER_DIED) for r in own if r in deadly]
    if not kept:
        return [], None, errors
    first, last = rows.index(kept[0]), rows.index(kept[-1]) + 1
    with process_pool(1) as pool:
        try:
            ids, volume, more = pool.submit(
                chunk_inputs, Chunk(rows, first, last), settings, context
            ).result()
        except BrokenProcessPool:  # the slices survive alone but not together (memory)
            return [], None, errors + [(display_source(r), WORKER_DIED) for r in kept]
    return ids, volume, errors + more


def decode_ahead(
    chunks: list[Chunk], settings: CacheSettings, context: int, workers: int, depth: int
) -> Iterator[Decoded]:
    """Yield every chunk's inputs in order, with up to ``depth`` decodes running ahead in
    ``workers`` processes (in this process when ``workers`` <= 1)."""
    if workers <= 1:
        for chunk in chunks:
            yield chunk_inputs(chunk, settings, context)
        return
    position = 0
    while position < len(chunks):
        crashed = yield from _run_pool(chunks, position, settings, context, workers, depth)
        if crashed is None:
            return
        yield _isolate(chunks[crashed], settings, context)
        position = crashed + 1


def _run_pool(
    chunks: list[Chunk],
    start: int,
    settings: CacheSettings,
    context: int,
    workers: int,
    depth: int,
) -> Generator[Decoded, None, int | None]:
    """Decode ``chunks[start:]`` in one pool; returns the chunk whose worker died, or None."""
    upcoming = iter(range(start, len(chunks)))
    with process_pool(workers) as pool:
        queue: deque[tuple[int, Future]] = deque(
            (k, pool.submit(chunk_inputs, chunks[k], settings, context))
            for k in itertools.islice(upcoming, max(1, depth))
        )
        while queue:
            k, future = queue.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                return k
            for nxt in itertools.islice(upcoming, 1):
                queue.append((nxt, pool.submit(chunk_inputs, chunks[nxt], settings, context)))
            yield result
    return None
