"""File identities: a short SHA-256 of a file's bytes (e.g. which CNN a series stage read)."""

from __future__ import annotations

import hashlib
import os


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of the file at ``path``, 16 hex digits."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()[:16]
