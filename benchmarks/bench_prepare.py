"""ichdet prepare vs the seed write-up's way, one process each, same files, one run.

Seed-style per file: pydicom dcmread, HU from the modality rescale, the write-up's three windows
(values outside -> window bottom, per-image min-max), PIL resize to the target size, PNG write.
ichdet: ``prepare`` with workers=1 and its default cache format (decode, HU, resize the HU image
with area averaging, window, zlib-compressed uint8 array).

    python benchmarks/bench_prepare.py [--studies 8] [--size 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from _common import machine, synthetic
from PIL import Image

from ichdet.data.cache import CacheSettings
from ichdet.data.index import build_index
from ichdet.data.prepare import cache_size_bytes, prepare
from ichdet.data.windows import PRESETS, apply_window_blackout_minmax


def seed_style(sources: list[str], out: Path, size: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for src in sources:
        ds = pydicom.dcmread(src)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        channels = [
            apply_window_blackout_minmax(hu, w.center, w.width)
            for w in (PRESETS["brain"], PRESETS["subdural"], PRESETS["bone"])
        ]
        rgb = (np.stack(channels, axis=-1) * 255).astype(np.uint8)
        Image.fromarray(rgb).resize((size, size)).save(out / (Path(src).stem + ".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--data", type=Path, default=None, help="a folder to use instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = args.data or synthetic(root, args.studies)
        index, _, _ = build_index(data, workers=1)
        sources = index["source"].tolist()
        print(f"machine: {machine()}")
        print(
            f"data: {data.name if args.data is None else data}, {len(sources)} slices, "
            f"512 px -> {args.size} px, one process each"
        )
        start = time.perf_counter()
        seed_style(sources, root / "seed", args.size)
        seed_s = time.perf_counter() - start
        start = time.perf_counter()
        directory, written, _, errors = prepare(
            index, root / "cache", CacheSettings(size=args.size), workers=1
        )
        ours_s = time.perf_counter() - start
        assert written == len(sources) and errors.empty
        seed_mb = cache_size_bytes(root / "seed") / 2**20
        ours_mb = cache_size_bytes(directory) / 2**20
        print(f"{'method':<12}{'seconds':>9}{'images/s':>10}{'MiB':>8}")
        print(f"{'seed-style':<12}{seed_s:>9.2f}{len(sources) / seed_s:>10.1f}{seed_mb:>8.1f}")
        print(f"{'ichdet':<12}{ours_s:>9.2f}{len(sources) / ours_s:>10.1f}{ours_mb:>8.1f}")
        print(f"ratio {seed_s / ours_s:.2f} (ichdet prepare speed / seed-style speed)")


if __name__ == "__main__":
    main()
