"""Training-time read throughput of the prepared cache, per core, at 256 px.

Reads every sample of a SliceDataset in one process (one core) for each cache format (zstd,
zlib, png, npy) and each neighbour context, and prints samples/s side by side.

    python benchmarks/bench_dataset.py [--studies 6] [--size 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, synthetic

from ichdet.data.cache import CacheSettings
from ichdet.data.dataset import SliceDataset
from ichdet.data.index import build_index
from ichdet.data.prepare import cache_size_bytes, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = synthetic(root, args.studies)
        index, _, _ = build_index(data, workers=2)
        print(f"machine: {machine()}")
        print(f"{len(index)} slices at {args.size} px, 3 windows, one process")
        print(f"{'format':<8}{'context':>8}{'channels':>9}{'samples/s':>11}{'KiB/image':>11}")
        rates = {}
        for fmt in ("zstd", "zlib", "png", "npy"):
            directory, _, _, _ = prepare(
                index, root / "cache", CacheSettings(size=args.size, format=fmt), workers=2
            )
            kib = cache_size_bytes(directory) / len(index) / 1024
            for context in (0, 1):
                ds = SliceDataset(index, directory, context=context)
                start = time.perf_counter()
                for i in range(len(ds)):
                    ds[i]
                rate = len(ds) / (time.perf_counter() - start)
                rates[(fmt, context)] = rate
                print(f"{fmt:<8}{context:>8}{ds.channels:>9}{rate:>11.0f}{kib:>11.1f}")
        for context in (0, 1):
            ratios = ", ".join(
                f"{fmt}/zlib {rates[(fmt, context)] / rates[('zlib', context)]:.2f}"
                for fmt in ("zstd", "png", "npy")
            )
            print(f"ratio {ratios} (samples/s, context {context})")


if __name__ == "__main__":
    main()
