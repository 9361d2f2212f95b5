"""``ichdet prepare``: every indexed image -> its resized uint8 window stack in the cache.

Fast path per image: decode once, HU, resize the HU image (area averaging: a lower-resolution HU
image, as a coarser scan would give), apply the windows, write. Parallel processes; resumable
(entries are written atomically, so one that exists is complete and is skipped).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ichdet.data.cache import CacheSettings, cache_dir, entry_path, write_entry, write_settings
from ichdet.data.windows import resize_image, resize_stack, to_uint8, window_stack
from ichdet.dicom.read import DicomError, read_slice
from ichdet.dicom.sources import read_source
from ichdet.util.atomic import atomic_path
from ichdet.util.parallel import map_chunks


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


def dicom_stack(source: str, settings: CacheSettings) -> np.ndarray:
    """A DICOM slice -> uint8 C x H x W window stack at ``settings.size``."""
    sl = read_slice(read_source(source))
    hu = resize_image(sl.hu, settings.size)
    return to_uint8(window_stack(hu, settings.windows, kind=settings.window_kind))


def _prepare_chunk(
    rows: list[tuple[str, str, str]], directory: str, settings: CacheSettings
) -> list[tuple[str, str, str]]:
    """Process (image_id, source, kind) rows; returns (image_id, source, error) for failures."""
    failed = []
    for image_id, source, kind in rows:
        try:
            make = image_stack if kind == "image" else dicom_stack
            write_entry(
                entry_path(directory, image_id, settings.format),
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


def pending(index: pd.DataFrame, directory: Path, fmt: str) -> pd.DataFrame:
    """Rows of ``index`` whose cache entry does not exist yet."""
    exists = [entry_path(directory, i, fmt).is_file() for i in index["image_id"]]
    return index[~np.asarray(exists, dtype=bool)]


def prepare(
    index: pd.DataFrame,
    root: str | os.PathLike,
    settings: CacheSettings,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> tuple[Path, int, int, pd.DataFrame]:
    """Fill the cache for ``index``; returns (cache dir, written, already there, errors)."""
    directory = cache_dir(root, settings)
    directory.mkdir(parents=True, exist_ok=True)
    write_settings(directory, settings)
    todo = pending(index, directory, settings.format)
    total and total(len(todo))
    rows = list(todo[["image_id", "source", "kind"]].itertuples(index=False, name=None))
    work = partial(_prepare_chunk, directory=os.fspath(directory), settings=settings)
    failed = map_chunks(work, rows, workers, max_chunk=64, progress=progress)
    errors = pd.DataFrame(failed, columns=["image_id", "source", "reason"])
    with atomic_path(directory / "errors.csv") as tmp:
        errors.to_csv(tmp, index=False)
    return directory, len(rows) - len(failed), len(index) - len(rows), errors


def cache_size_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file())
