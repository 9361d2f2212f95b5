"""``ichdet prepare``: every indexed image -> its resized uint8 window stack in the cache.

Fast path per image: decode once, HU, resize the HU image (area averaging: a lower-resolution HU
image, as a coarser scan would give), apply the windows, write. Parallel processes; resumable
(entries are written atomically, so one that exists is complete and is skipped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ichdet.data.cache import (
    CacheSettings,
    cache_dir,
    cache_key,
    entry_path,
    read_entry,
    write_entry,
    write_settings,
)
from ichdet.data.windows import resize_image, resize_stack, to_uint8, window_stack
from ichdet.dicom.read import DicomError, read_hu
from ichdet.dicom.sources import read_source
from ichdet.util.memory import reuse_freed_memory
from ichdet.util.parallel import WORKER_DIED, map_chunks
from ichdet.util.tables import write_csv

if TYPE_CHECKING:
    import pandas as pd


Row = tuple[str, str, str]  #: (image_id, source, kind) of one index row
ROW_COLUMNS = ("image_id", "source", "kind")


def image_stack(source: str, settings: CacheSettings) -> np.ndarray:
    """A pre-windowed PNG/JPG -> uint8 C x H x W; a grayscale image fills every channel."""
    data = read_source(source)
    raw = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else np.fromfile(data, np.uint8)
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError("not a readable PNG/JPEG image")
    if img.dtype == np.uint16:
        img = (img / 257.0).astype(np.uint8)  # 65535 -> 255
    elif img.dtype != np.uint8:
        raise ValueError(f"unsupported image sample type {img.dtype}")
    if img.ndim == 2:
        img = resize_image(img, settings.size)
        return np.repeat(img[None], settings.channels, axis=0)
    img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    if settings.channels != 3:
        raise ValueError(f"colour image has 3 channels; the cache has {settings.channels}")
    return resize_stack(np.moveaxis(img, -1, 0), settings.size)


def hu_stack(hu: np.ndarray, settings: CacheSettings) -> np.ndarray:
    """A HU image (float32 H x W) -> uint8 C x H x W window stack at ``settings.size``."""
    small = resize_image(hu, settings.size)
    return to_uint8(window_stack(small, settings.windows, kind=settings.window_kind))


def dicom_stack(source: str, settings: CacheSettings) -> np.ndarray:
    """A DICOM slice -> uint8 C x H x W window stack at ``settings.size``."""
    return hu_stack(read_hu(read_source(source)), settings)


def slab_stack(
    sources: str, settings: CacheSettings, known: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """A slab (``sources``: JSON list of thin slices, in z order) -> the window stack of the
    mean of their HU images (ichdet.selection.slabs); ``known``: slices decoded already."""
    paths = json.loads(sources)
    if not isinstance(paths, list) or not paths:
        raise ValueError("a slab needs a list of slices")
    total: np.ndarray | None = None
    for path in paths:
        hu = (known or {}).get(str(path))
        hu = read_hu(read_source(str(path))) if hu is None else hu
        if total is not None and hu.shape != total.shape:
            raise ValueError(
                f"{path}: {hu.shape} pixels; the slab's other slices have {total.shape}"
            )
        total = hu.astype(np.float64) if total is None else total + hu
    assert total is not None
    return hu_stack((total / len(paths)).astype(np.float32), settings)


def _prepare_chunk(rows: list[Row], directory: str, settings: CacheSettings) -> list[Row]:
    """Process (image_id, source, kind) rows; returns (image_id, source, error) for failures."""
    reuse_freed_memory()
    failed = []
    for image_id, source, kind in rows:
        try:
            make = image_stack if kind == "image" else dicom_stack
            write_entry(
                entry_path(directory, cache_key(image_id, source, kind), settings.format),
                make(source, settings),
                settings.format,
            )
        except DicomError as exc:
            failed.append((image_id, source, exc.reason))
        except (ValueError, OSError) as exc:
            failed.append((image_id, source, str(exc)))
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a batch
            failed.append((image_id, source, f"{type(exc).__name__}: {exc}"))
    return failed


def read_rows(index_path: str | os.PathLike) -> list[Row]:
    """The rows ``prepare`` needs, read from an index parquet with pyarrow alone.

    ``ichdet prepare`` starts with this instead of pandas: a third of a second saved per run.
    """
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(os.fspath(index_path))
    names = set(parquet.schema_arrow.names)
    if not {"image_id", "source"} <= names:
        raise ValueError(f"{index_path}: not an ichdet index (no image_id/source columns)")
    table = parquet.read(columns=[c for c in ROW_COLUMNS if c in names], use_pandas_metadata=False)
    ids, sources = table.column("image_id").to_pylist(), table.column("source").to_pylist()
    kinds = table.column("kind").to_pylist() if "kind" in names else ["dicom"] * len(ids)
    return list(zip(ids, sources, kinds, strict=True))


def frame_rows(index: pd.DataFrame) -> list[Row]:
    frame = index if "kind" in index else index.assign(kind="dicom")
    return list(frame[list(ROW_COLUMNS)].itertuples(index=False, name=None))


def pending(
    rows: list[Row], directory: Path, settings: CacheSettings, verify: bool = False
) -> list[Row]:
    """The rows whose cache entry is missing or empty, or with ``verify`` does not decode.

    Entries are renamed into place whole, but without an fsync per file a crash can still
    leave one empty or cut short on some file systems: the size check is free, the full
    check (``ichdet prepare --verify``) decodes every entry.
    """
    fmt = settings.format
    return [
        r
        for r in rows
        if not _entry_ok(entry_path(directory, cache_key(*r), fmt), settings, verify)
    ]


def _entry_ok(path: Path, settings: CacheSettings, verify: bool) -> bool:
    try:
        if os.stat(path).st_size == 0:
            return False
        if verify:
            read_entry(path, settings.format, settings.channels)
    except (OSError, ValueError, EOFError):
        return False
    return True


def _worker_died(row: Row) -> list[Row]:
    return [(row[0], row[1], WORKER_DIED)]


def prepare_rows(
    rows: list[Row],
    root: str | os.PathLike,
    settings: CacheSettings,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
    verify: bool = False,
    mapper: Callable[..., list] = map_chunks,
) -> tuple[Path, int, int, list[Row]]:
    """Fill the cache for ``rows``; returns (cache dir, written, already there, failures as
    (image_id, source, reason)); the failures are also in ``errors.csv`` of the cache dir.
    ``mapper``: where the work runs (this machine's processes, or a Ray cluster:
    ``ichdet.util.ray_engine.mapper``; there the cache root must be on storage every node
    writes to)."""
    directory = cache_dir(root, settings)
    directory.mkdir(parents=True, exist_ok=True)
    write_settings(directory, settings)
    todo = pending(rows, directory, settings, verify)
    total and total(len(todo))
    work = partial(_prepare_chunk, directory=os.fspath(directory), settings=settings)
    failed = mapper(work, todo, workers, max_chunk=64, progress=progress, on_crash=_worker_died)
    write_csv(directory / "errors.csv", ["image_id", "source", "reason"], failed)
    return directory, len(todo) - len(failed), len(rows) - len(todo), failed


def prepare(
    index: pd.DataFrame,
    root: str | os.PathLike,
    settings: CacheSettings,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> tuple[Path, int, int, pd.DataFrame]:
    """Fill the cache for ``index``; returns (cache dir, written, already there, errors)."""
    import pandas as pd

    directory, written, existing, failed = prepare_rows(
        frame_rows(index), root, settings, workers, progress, total
    )
    return (
        directory,
        written,
        existing,
        pd.DataFrame(failed, columns=list(ROW_COLUMNS[:2]) + ["reason"]),
    )


def cache_size_bytes(directory: str | os.PathLike) -> int:
    """Bytes of every file under ``directory``."""
    total = 0
    for folder, _, files in os.walk(os.fspath(directory)):
        total += sum(os.stat(os.path.join(folder, f)).st_size for f in files)
    return total
