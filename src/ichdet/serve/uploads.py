"""Uploads -> studies on disk: files or a zip, checked, then split by study.

Nothing from the request names a file: parts are written as ``<n>.dcm`` under a fresh folder,
zip members likewise. One byte budget covers the whole upload: the parts as received and what
every zip in it inflates to (forty small zips cannot write forty times the limit). A zip is
refused when it declares too many members, a member over the per-file cap, more inflated bytes
than the budget left, or a compression ratio no CT file has (a zip bomb); its members are read
only up to their declared size, and counted as they are written. The files are then indexed
(header reads) and moved, study by study, to ``studies/<internal id>/files/``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ichdet.data.index import build_index
from ichdet.dicom.sources import member_problem
from ichdet.serve.store import new_id
from ichdet.util.atomic import write_text

CHUNK = 1 << 20
#: A CT file deflates at most ~10:1; a zip member declaring more than this ratio is a bomb.
MAX_RATIO = 200
MAX_MEMBERS = 20_000


class UploadError(Exception):
    """A refused upload: ``status`` is the HTTP status, ``reason`` the JSON reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class UploadLimits:
    """The byte budget of one upload: its parts and what its zips inflate to, together."""

    max_bytes: int = 2 * 2**30
    used: int = 0

    def spend(self, n: int, what: str = "upload") -> None:
        self.used += n
        if self.used > self.max_bytes:
            raise UploadError(413, f"{what} over the {self.max_bytes}-byte limit of one upload")

    @property
    def left(self) -> int:
        return self.max_bytes - self.used


def save_parts(parts: Iterable[BinaryIO], folder: Path, limits: UploadLimits) -> int:
    """Copy each part to ``folder/<n>.part``; returns the bytes written (413 past the limit)."""
    folder.mkdir(parents=True)
    before = limits.used
    for n, part in enumerate(parts):
        with open(folder / f"{n}.part", "wb") as out:
            while chunk := part.read(CHUNK):
                limits.spend(len(chunk))
                out.write(chunk)
    if limits.used == before:
        raise UploadError(400, "no file in the upload (form field 'files')")
    return limits.used - before


def expand_zips(folder: Path, limits: UploadLimits) -> None:
    """Replace every zip part by its members (``<part>_<m>.dcm``), checked first."""
    for part in sorted(folder.glob("*.part")):
        if not zipfile.is_zipfile(part):
            part.rename(part.with_suffix(".dcm"))
            continue
        try:
            with zipfile.ZipFile(part) as zf:
                members = [i for i in zf.infolist() if not i.is_dir()]
                _check_zip(members, limits)
                for m, info in enumerate(members):
                    with zf.open(info) as src, open(folder / f"{part.stem}_{m}.dcm", "wb") as out:
                        while chunk := src.read(CHUNK):
                            limits.spend(len(chunk), "what the zips inflate to")
                            out.write(chunk)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
            raise UploadError(400, f"unreadable zip ({type(exc).__name__}: {exc})") from None
        part.unlink()


def _check_zip(members: list[zipfile.ZipInfo], limits: UploadLimits) -> None:
    if len(members) > MAX_MEMBERS:
        raise UploadError(413, f"zip holds {len(members)} files, over {MAX_MEMBERS}")
    inflated = sum(i.file_size for i in members)
    if inflated > limits.left:
        raise UploadError(413, f"zip inflates to {inflated} bytes, over the {limits.left} left")
    for info in members:
        problem = member_problem(info)
        ratio = info.file_size / max(info.compress_size, 1)
        if problem or ratio > MAX_RATIO:
            raise UploadError(413, f"zip refused: {problem or f'compression ratio {ratio:.0f}:1'}")


def split_studies(
    folder: Path, studies_root: Path, owner: str = "local", room: int | None = None
) -> tuple[list[tuple[str, int]], list[str]]:
    """Index ``folder``; move each study's files to ``studies_root/<new id>/files`` (with an
    ``owner`` file: the server that must queue it after a crash). Refused (429) when it holds
    more studies than ``room`` in the queue. Returns ([(id, files)], reasons of the files that
    were not readable CT slices)."""
    index, errors, _ = build_index(folder)
    reasons = [str(r) for r in errors["reason"]]
    if index.empty:
        summary = "; ".join(sorted(set(reasons))[:3]) or "no files"
        raise UploadError(422, f"no readable CT slice in the upload ({summary})")
    groups = list(index.groupby("study_id", sort=False))
    if room is not None and len(groups) > room:
        raise UploadError(
            429,
            f"the upload holds {len(groups)} studies; the queue has room for "
            f"{max(room, 0)}: retry later",
        )
    found = []
    for _, rows in groups:
        study_id = new_id()
        dest = studies_root / study_id / "files"
        dest.mkdir(parents=True)
        write_text(studies_root / study_id / "owner", owner)
        for k, source in enumerate(rows["source"]):
            Path(source).rename(dest / f"{k}.dcm")
        found.append((study_id, len(rows)))
    return found, reasons
