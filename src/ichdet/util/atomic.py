"""Atomic writes: a temporary sibling, then a rename, so no half-written file survives."""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _default_mode() -> int:
    mask = os.umask(0)  # read the umask (there is no getter) and put it back
    os.umask(mask)
    return 0o666 & ~mask


#: mkstemp creates files readable by the owner only; outputs get the usual permissions.
FILE_MODE = _default_mode()


def use_private_files() -> None:
    """From now on, files and folders this process creates are its owner's only (umask 077,
    atomic writes 0600): what a service that holds patient data sets at start."""
    global FILE_MODE
    os.umask(0o077)
    FILE_MODE = 0o600


_serial = itertools.count()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomic write of ``data``; the hot path of ``prepare`` (one call per cache entry).

    Cheaper than :func:`atomic_path`: the temporary name is unique by process id and a counter
    (no random names), created with the umask's permissions (no chmod), and the folder is made
    only when the first open finds it missing.
    """
    target = os.fspath(path)
    folder = os.path.dirname(target) or "."
    tmp = os.path.join(folder, f".{os.path.basename(target)}.{os.getpid()}.{next(_serial)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(tmp, flags, 0o666)
    except FileExistsError:  # a leftover of a dead process with our pid: take the slow path
        with atomic_path(target) as slow:
            slow.write_bytes(data)
        return Path(target)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(target)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
