"""Where images come from: files in folders, or members of a zip read in place.

A *source* is a string: a file path, or ``ARCHIVE.zip::member/path`` for a zip member. The Kaggle
download is one ~180 GB zip; reading members directly avoids unpacking ~450 GB.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
import zlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import IO

ZIP_SEP = "::"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def zip_source(archive: str | os.PathLike, member: str) -> str:
    return f"{os.fspath(archive)}{ZIP_SEP}{member}"


def split_source(source: str) -> tuple[str, str | None]:
    """``"a.zip::x/y.dcm" -> ("a.zip", "x/y.dcm")``; a plain path -> (path, None)."""
    if ZIP_SEP in source:
        archive, member = source.split(ZIP_SEP, 1)
        return archive, member
    return source, None


@lru_cache(maxsize=8)
def _open_zip(archive: str, pid: int) -> zipfile.ZipFile:
    # one handle per process (the pid in the key keeps forked workers from sharing a handle)
    return zipfile.ZipFile(archive)


def read_source(source: str) -> bytes | str:
    """Bytes of a zip member, or the path itself for a file (readers open paths faster)."""
    archive, member = split_source(source)
    if member is None:
        return archive
    try:
        return _open_zip(archive, os.getpid()).read(member)
    except (KeyError, zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise ValueError(f"unreadable zip member ({exc})") from exc


@contextlib.contextmanager
def open_source(source: str) -> Iterator[IO[bytes]]:
    """A binary stream of a file or zip member. A header-only read of a zip member inflates just
    the bytes it reads, not the whole ~0.5 MB slice."""
    archive, member = split_source(source)
    try:  # only opening is guarded: errors of the caller's reads pass through unchanged
        if member is None:
            stream: IO[bytes] = open(archive, "rb")  # noqa: SIM115 - closed by the with below
        else:
            stream = _open_zip(archive, os.getpid()).open(member)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"unreadable ({exc})") from exc
    with stream:
        yield stream


def source_stem(source: str) -> str:
    """File name without suffix: ``.../ID_abc.dcm`` -> ``ID_abc``."""
    _, member = split_source(source)
    name = member if member is not None else source
    return Path(name.replace("\\", "/")).name.rsplit(".", 1)[0]


def list_sources(data: str | os.PathLike) -> Iterator[str]:
    """Every file under a folder (any nesting), or every member of a zip, in sorted order.

    Hidden files and folders (``.``-prefixed) and macOS resource forks are left out.
    """
    path = Path(data)
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = sorted(i.filename for i in zf.infolist() if not i.is_dir())
        for name in names:
            parts = name.split("/")
            if any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue
            yield zip_source(path, name)
        return
    if not path.is_dir():
        raise FileNotFoundError(f"{data}: not a folder or a zip file")
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(root, name)


def find_member(data: str | os.PathLike, name: str) -> str | None:
    """A file named ``name`` at the top of a folder or a zip (under at most one folder level)."""
    path = Path(data)
    if path.is_dir():
        hits = [path / name, *sorted(path.glob(f"*/{name}"))]
        return next((os.fspath(p) for p in hits if p.is_file()), None)
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                if member == name or (member.endswith("/" + name) and member.count("/") == 1):
                    return zip_source(path, member)
    return None


def open_text(source: str) -> str:
    archive, member = split_source(source)
    if member is None:
        return Path(archive).read_text()
    data = read_source(source)
    assert isinstance(data, bytes)
    return data.decode()
