"""ichdet prepare vs the seed write-up's way, one process each, same files, one run.

Two comparisons:

- in-process: the seed-style loop (``seed_prepare.seed_style``) and ``ichdet.data.prepare.prepare``
  called from this script, timing only the work on the files;
- whole command: ``python benchmarks/seed_prepare.py DATA OUT`` against
  ``ichdet prepare INDEX --out CACHE --workers 1``, each a fresh process, start-up, imports and
  (for ichdet) index reading included. This is what a user waits for.

Seed-style per file: pydicom dcmread, HU from the modality rescale, the write-up's three windows
(values outside -> window bottom, per-image min-max), PIL bilinear resize, PNG write. ichdet:
decode once, HU, resize the HU image with area averaging, window, zlib-compressed uint8 array,
atomic write. CPU seconds (user + system) are printed beside wall seconds, so any use of a
second core shows.

    python benchmarks/bench_prepare.py [--studies 8] [--size 256] [--data FOLDER]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, synthetic
from seed_prepare import seed_style

from ichdet.data.cache import CacheSettings
from ichdet.data.index import build_index, write_index
from ichdet.data.prepare import cache_size_bytes, prepare

HERE = Path(__file__).resolve().parent


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_command(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one command in a fresh process."""
    cpu, start = child_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, child_cpu() - cpu


def row(name: str, n: int, seconds: float, cpu: float | None = None, mib: float | None = None):
    extra = f"{cpu:>8.2f}" if cpu is not None else f"{'':>8}"
    size = f"{mib:>8.1f}" if mib is not None else ""
    print(f"{name:<28}{seconds:>9.2f}{extra}{n / seconds:>10.1f}{size}")


def in_process(root: Path, data: Path, size: int) -> float:
    index, _, _ = build_index(data, workers=1)
    sources = [Path(s) for s in index["source"]]
    start = time.perf_counter()
    seed_style(sources, root / "seed", size)
    seed_s = time.perf_counter() - start
    start = time.perf_counter()
    directory, written, _, errors = prepare(index, root / "cache", CacheSettings(size=size))
    ours_s = time.perf_counter() - start
    assert written == len(sources) and errors.empty
    print(f"\nin-process, {len(sources)} slices{'':<9}seconds{'':>8}images/s     MiB")
    row("seed-style", len(sources), seed_s, mib=cache_size_bytes(root / "seed") / 2**20)
    row("ichdet prepare()", len(sources), ours_s, mib=cache_size_bytes(directory) / 2**20)
    print(f"ratio {seed_s / ours_s:.2f} (in-process)")
    return seed_s / ours_s


def whole_command(root: Path, data: Path, size: int) -> float:
    df, errors, report = build_index(data, workers=1)
    index = write_index(df, errors, report, root / "index.parquet")
    n = len(df)
    shutil.rmtree(root / "seed", ignore_errors=True)
    seed = [sys.executable, str(HERE / "seed_prepare.py"), str(data), str(root / "seed")]
    ichdet = [sys.executable, "-m", "ichdet", "prepare", str(index), "--out", str(root / "c2")]
    seed_s, seed_cpu = timed_command([*seed, "--size", str(size)])
    ours_s, ours_cpu = timed_command([*ichdet, "--size", str(size), "--workers", "1"])
    print(f"\nwhole command, {n} slices{'':<6}seconds     CPU  images/s")
    row("seed_prepare.py", n, seed_s, seed_cpu)
    row("ichdet prepare --workers 1", n, ours_s, ours_cpu)
    print(f"ratio {seed_s / ours_s:.2f} (whole command)")
    return seed_s / ours_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--data", type=Path, default=None, help="a folder to use instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = args.data or synthetic(root, args.studies)
        print(f"machine: {machine()}")
        print(f"data: {data.name if args.data is None else data}, 512 px -> {args.size} px")
        in_process(root, data, args.size)
        whole_command(root, data, args.size)


if __name__ == "__main__":
    main()
