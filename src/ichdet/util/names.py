"""File names from untrusted strings: a header value never becomes a path as it is."""

from __future__ import annotations

import hashlib
import re

#: A plain id: DICOM UIDs (digits and dots, <= 64 characters), RSNA ids (``ID_3fa...``), stems.
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def path_component(text: str) -> str:
    """``text`` as one safe file-name component.

    A plain id is kept as it is; anything else (slashes, ``..``, control characters, more than
    64 characters, an empty string) becomes ``_`` + 32 hex digits of its SHA-256. Kept names
    never start with ``_``, so a hashed name cannot collide with a kept one.
    """
    if _PLAIN.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return "_" + digest[:32]


def short_hash(text: str, digits: int = 12) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:digits]
