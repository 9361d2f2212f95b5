"""Caps on what one input may cost, checked before any decoding.

Defaults suit head CT (512 x 512 slices of ~0.5 MiB); a study of larger images can raise them
with environment variables, read when first needed:

- ``ICHDET_MAX_PIXELS``: rows x columns of one slice (default 4096 x 4096);
- ``ICHDET_MAX_FILE_MB``: bytes of one file or inflated zip member (default 256 MiB).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 4096 * 4096
    max_file_bytes: int = 256 * 2**20


@lru_cache(maxsize=1)
def limits() -> Limits:
    """The caps in force (defaults, or the environment's values)."""
    default = Limits()
    pixels = os.environ.get("ICHDET_MAX_PIXELS")
    megabytes = os.environ.get("ICHDET_MAX_FILE_MB")
    return Limits(
        max_pixels=int(pixels) if pixels else default.max_pixels,
        max_file_bytes=int(float(megabytes) * 2**20) if megabytes else default.max_file_bytes,
    )
