"""File identities: a short SHA-256 of a file's bytes (e.g. which CNN a series stage read)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the file at ``path``, 16 hex digits."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()[:16]


def files_digest(paths: Sequence[str | os.PathLike]) -> str:
    """One identity of several files (an ensemble's checkpoints), in the given order."""
    joined = ",".join(file_digest(p) for p in paths)
    return file_digest_text(joined) if len(paths) > 1 else (joined or "")


def file_digest_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
