"""Secrets in files: a token file must be readable by its owner alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def read_private(path: Path) -> str:
    """The stripped text of ``path``; ValueError when it cannot be read or when others (group,
    world) may read it, naming the file and what to do."""
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror})") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{path}: readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    return text
