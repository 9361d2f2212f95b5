"""The series stage on the CPU: embedding extraction, sequence training per encoder, bytes.

Needs the demo's folder (``make demo`` leaves ``demo-run/``; its CNN is ``demo-run/run``).
Prints, measured in this one run on this machine:

- embedding throughput of the demo CNN (TinyNet-E, 128 px) without and with flip TTA, and the
  ratio; bytes per image and the size for the 752,803 RSNA training images;
- sequence training throughput (series/s and slices/s) of each encoder for a few epochs, and
  each one's ratio to the CNN's embedding pass over the same slices.

    python benchmarks/bench_sequence.py [--demo demo-run] [--epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from ichdet.demo import DemoConfig, sequence_config
from ichdet.models.sequence import ENCODERS
from ichdet.training.embed import embed_frame
from ichdet.training.sequence_task import fit_sequence
from ichdet.training.slice_task import resolve_cache

RSNA_TRAIN_IMAGES = 752_803


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-run"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=2000, help="images to embed")
    args = parser.parse_args()
    torch.set_num_threads(2)
    demo = args.demo
    index = pd.read_parquet(demo / "index.parquet")
    frame = index[index["split"] == "train"].head(args.images)
    cache = resolve_cache(demo / "cache", DemoConfig().size, "brain,subdural,bone")
    checkpoint = demo / "run" / "best.pt"
    quiet = dict(log=lambda s: None)
    plain = embed_frame(checkpoint, frame, cache, tta=False, **quiet)  # type: ignore[arg-type]
    tta = embed_frame(checkpoint, frame, cache, tta=True, **quiet)  # type: ignore[arg-type]
    rate, rate_tta = plain.meta["images_per_s"], tta.meta["images_per_s"]
    per_image = plain.bytes_per_image()
    print(
        f"embedding, {len(plain.ids)} images: {rate:.0f} img/s; with flip TTA {rate_tta:.0f} img/s"
    )
    print(f"  ratio (TTA / plain time): {rate / rate_tta:.2f}x")
    print(
        f"  {per_image:.0f} bytes per image ({plain.features.shape[1]} float16 features + 6 "
        f"float32 logits) -> {per_image * RSNA_TRAIN_IMAGES / 1e9:.2f} GB for "
        f"{RSNA_TRAIN_IMAGES:,} RSNA training images per fold"
    )
    slices = int((index["split"] == "train").sum())
    for arch in sorted(ENCODERS):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = replace(
                sequence_config(DemoConfig(), demo), arch=arch, epochs=args.epochs, out=tmp
            )
            started = time.perf_counter()
            report = fit_sequence(cfg, **quiet)  # type: ignore[arg-type]
            seconds = time.perf_counter() - started
        seq_rate = report["epochs"] * slices / seconds
        print(
            f"sequence {arch:11s}: {args.epochs} epochs in {seconds:.1f} s (incl. validation), "
            f"{seq_rate:.0f} slices/s; ratio to embedding: {seq_rate / rate:.1f}x"
        )


if __name__ == "__main__":
    main()
