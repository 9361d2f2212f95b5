"""Where images come from: files in folders, or members of a zip read in place.

A *source* is a string: a file path, or ``ARCHIVE.zip::member/path`` for a zip member. The Kaggle
download is one ~180 GB zip; reading members directly avoids unpacking ~450 GB.
"""

from __future__ import annotations

import contextlib
import os
import stat
import zipfile
import zlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import IO

from ichdet.util.limits import limits

ZIP_SEP = "::"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def zip_source(archive: str | os.PathLike, member: str) -> str:
    return f"{os.fspath(archive)}{ZIP_SEP}{member}"


def split_source(source: str) -> tuple[str, str | None]:
    """``"a.zip::x/y.dcm" -> ("a.zip", "x/y.dcm")``; a plain path -> (path, None).

    A file whose own name holds ``::`` is a plain path: the split applies only when the part
    before the separator is a file and the whole string is not.
    """
    if ZIP_SEP in source and not os.path.lexists(source):
        archive, member = source.split(ZIP_SEP, 1)
        if os.path.isfile(archive):
            return archive, member
    return source, None


def regular_file_problem(path: str) -> str | None:
    """Why ``path`` must not be read (a FIFO, a device, a socket, a link to one: reading could
    block forever or never end), or None for a regular file."""
    try:
        mode = os.stat(path).st_mode  # follows links: a link to a regular file is fine
    except OSError as exc:
        return f"cannot stat ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    )
    what = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"not a regular file ({what}); skipped"


def member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member must not be inflated: its declared size is over the cap."""
    cap = limits().max_file_bytes
    if info.file_size > cap:
        return f"zip member declares {info.file_size} bytes, over the {cap}-byte cap"
    return None


@lru_cache(maxsize=8)
def _open_zip(archive: str, pid: int) -> zipfile.ZipFile:
    # one handle per process (the pid in the key keeps forked workers from sharing a handle)
    return zipfile.ZipFile(archive)


def read_source(source: str) -> bytes | str:
    """Bytes of a zip member, or the path itself for a file (readers open paths faster)."""
    archive, member = split_source(source)
    if member is None:
        problem = regular_file_problem(archive)
        if problem:
            raise ValueError(problem)
        return archive
    try:
        zf = _open_zip(archive, os.getpid())
        problem = member_problem(zf.getinfo(member))
        if problem:
            raise ValueError(problem)
        return zf.read(member)
    except (KeyError, zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise ValueError(f"unreadable zip member ({exc})") from exc


@contextlib.contextmanager
def open_source(source: str) -> Iterator[IO[bytes]]:
    """A binary stream of a file or zip member. A header-only read of a zip member inflates just
    the bytes it reads, not the whole ~0.5 MB slice."""
    archive, member = split_source(source)
    try:  # only opening is guarded: errors of the caller's reads pass through unchanged
        if member is None:
            problem = regular_file_problem(archive)
            if problem:
                raise ValueError(problem)
            stream: IO[bytes] = open(archive, "rb")  # noqa: SIM115 - closed by the with below
        else:
            zf = _open_zip(archive, os.getpid())
            problem = member_problem(zf.getinfo(member))
            if problem:
                raise ValueError(problem)
            stream = zf.open(member)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"unreadable ({exc})") from exc
    with stream:
        yield stream


def source_stem(source: str) -> str:
    """File name without suffix: ``.../ID_abc.dcm`` -> ``ID_abc``."""
    _, member = split_source(source)
    name = member if member is not None else source
    return Path(name.replace("\\", "/")).name.rsplit(".", 1)[0]


def list_sources(
    data: str | os.PathLike, skipped: list[tuple[str, str]] | None = None
) -> Iterator[str]:
    """Every regular file under a folder (any nesting), or every member of a zip, sorted.

    What is not read is appended to ``skipped`` as (source, reason): hidden files and folders
    (``.``-prefixed), macOS resource forks, FIFOs, devices and sockets. Nothing vanishes.
    """
    skipped = [] if skipped is None else skipped
    path = Path(data)
    if path.is_file() and zipfile.is_zipfile(path):
        yield from _zip_members(path, skipped)
        return
    if not path.is_dir():
        raise FileNotFoundError(f"{data}: not a folder or a zip file")
    for root, dirs, files in os.walk(path):
        hidden = sorted(d for d in dirs if d.startswith("."))
        skipped += [(os.path.join(root, d), "hidden folder; skipped") for d in hidden]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            full = os.path.join(root, name)
            problem = "hidden file; skipped" if name.startswith(".") else regular_file_problem(full)
            if problem:
                skipped.append((full, problem))
            else:
                yield full


def _zip_members(archive: Path, skipped: list[tuple[str, str]]) -> Iterator[str]:
    with zipfile.ZipFile(archive) as zf:
        names = sorted(i.filename for i in zf.infolist() if not i.is_dir())
    for name in names:
        parts = [p for p in name.split("/") if p not in ("", ".")]  # "./dir/x.dcm" is fine
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            skipped.append((zip_source(archive, name), "hidden or resource-fork member; skipped"))
            continue
        yield zip_source(archive, name)


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
