"""What segmentation adds to one study: `predict` warm with and without the segmenter.

A 40-slice phantom study (DICOM files); the demo's models by default: the slice CNN TinyNet-E at
128 px and the segmenter (U-Net over TinyNet-E) at 128 px, random weights (speed does not depend
on them), torch and ONNX. Also the segmentation step alone (decode + U-Net + volumes), which is
what "a study's volume" costs once its files are there.

    python benchmarks/bench_segment.py [--slices 40] [--study-size 160] [--model tinynet_e]
        [--size 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from _common import machine, random_model

from ichdet.data.cache import CacheSettings
from ichdet.data.index import build_index
from ichdet.data.masks import read_series_masks
from ichdet.dicom.write import ct_dataset, save_dataset
from ichdet.inference.export import export_onnx
from ichdet.inference.predict import predict
from ichdet.inference.runners import load_runner
from ichdet.inference.seg_runner import load_segmenter
from ichdet.inference.segment import segment_rows
from ichdet.models.checkpoint import save_checkpoint
from ichdet.models.segmenter import KIND, SegmenterConfig, build_segmenter
from ichdet.synth.phantom import Grid, plan_study, render_slice, resliced


def write_study(folder: Path, slices: int, size: int) -> None:
    rng = np.random.default_rng(0)
    plan = resliced(plan_study(rng, size, positive=True), slices)
    grid = Grid.for_plan(plan)
    for k in range(slices):
        hu, _ = render_slice(plan, k, grid)
        save_dataset(
            ct_dataset(
                (np.rint(hu) + 1024).astype(np.int16),
                position=(0, 0, plan.slice_z(k)),
                pixel_spacing=(plan.spacing, plan.spacing),
                instance_number=k + 1,
                study_instance_uid="1.2.3",
                series_instance_uid="1.2.3.4",
            ),
            folder / f"slice{k:03d}.dcm",
        )


def random_segmenter(root: Path, name: str, size: int) -> Path:
    config = SegmenterConfig(name=name)
    path = root / "segmenter.pt"
    save_checkpoint(
        path,
        {
            "kind": KIND,
            "model": build_segmenter(config).state_dict(),
            "model_config": config.to_dict(),
            "cache_settings": CacheSettings(size=size).to_dict(),
            "context": 0,
        },
    )
    return path


def interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, the runs alternated (one warm-up each first), so a machine
    that speeds up or slows down during the benchmark affects them alike."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--study-size", type=int, default=160, help="DICOM rows/columns")
    parser.add_argument("--model", default="tinynet_e")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_study(root / "study", args.slices, args.study_size)
        cnn = load_runner([random_model(root, args.model, args.size)])
        seg_ckpt = random_segmenter(root, args.model, args.size)
        # gate 0: every slice's masks measured (with random weights the gate would drop most
        # slices and skip their thickness measurement, flattering the time)
        segmenters = {
            "torch": load_segmenter([seg_ckpt], gate=0),
            "onnx": load_segmenter([export_onnx([seg_ckpt], root / "seg.onnx")], gate=0),
        }
        rows: pd.DataFrame = build_index(root / "study")[0]
        print(f"machine: {machine()}")
        print(
            f"{args.slices}-slice study of {args.study_size} px DICOMs; slice CNN and segmenter "
            f"({args.model}) at {args.size} px; median of {args.repeats} warm runs, interleaved"
        )
        runs: dict[str, Callable[[], object]] = {
            "base": lambda: predict(cnn, root / "study", root / "plain")
        }
        for name, seg in segmenters.items():
            runs[f"alone {name}"] = lambda s=seg: list(segment_rows(s, rows))
            runs[f"both {name}"] = lambda s=seg, n=name: predict(
                cnn, root / "study", root / f"seg_{n}", segmenter=s
            )
        found = interleaved(runs, args.repeats)
        base = found["base"]
        print(f"{'predict, no segmenter':<36}{base:>8.3f} s")
        for name in segmenters:
            (mask_file,) = (root / f"seg_{name}" / "masks").glob("*.npz")
            segmented = len(read_series_masks(mask_file)[0])
            alone, both = found[f"alone {name}"], found[f"both {name}"]
            print(f"{'segmentation alone, ' + name:<36}{alone:>8.3f} s")
            print(
                f"{'predict + segmenter, ' + name:<36}{both:>8.3f} s   ratio {both / base:.2f} "
                f"(+{both - base:.3f} s per study; {segmented} slices segmented)"
            )


if __name__ == "__main__":
    main()
