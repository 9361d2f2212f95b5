"""Malloc settings for the per-image loops (glibc on Linux; elsewhere nothing changes).

Each slice allocates a few arrays of 0.2-1 MiB (file bytes, stored values, HU, windows). glibc
serves blocks that large with mmap and returns them to the system when freed, so every image
faults its pages in afresh; in a new ``ichdet prepare`` process that cost ~0.8 ms of ~3.5 ms per
512 px slice, most of it system time (benchmarks/RESULTS.md). Keeping freed blocks in the heap
for the next image removes it; the heap then holds about one image's worth of memory more.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's largest allowed mmap threshold on 64-bit systems
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 256 * 2**20

_applied: bool | None = None


def reuse_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True where that applied."""
    global _applied
    if _applied is None:
        _applied = sys.platform.startswith("linux") and _mallopt()
    return _applied


def _mallopt() -> bool:
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): leave malloc alone
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
