"""The figures that matter at scale: per-core decode rate, per-replica inference rate, and the
local engine against Ray on this machine (the overhead of Ray), then a projection.

One synthetic set (512 px DICOMs, like RSNA's), an EfficientNet-B0 at 256 px with random
weights (speed does not depend on them). Measured in one run, interleaved (local, ray, local,
ray ...), each run into a fresh output folder (nothing resumed):

- decode + HU + window + resize: images/s on one core (one process);
- the model: images/s of one replica on one thread (what a Ray replica with 1 CPU gets) and
  on all threads;
- ``ichdet index``, ``prepare`` and ``predict`` with ``--engine local`` (``--workers`` =
  cores) and ``--engine ray`` (a Ray instance of the same cores, started once, its start
  timed apart);
- the projection, from those rates, of the RSNA set (874,035 slices) and of 10 million
  slices on N nodes of 16 cores (+ 1 GPU).

    python benchmarks/bench_scale.py [--studies 24] [--repeats 2] [--model efficientnet_b0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import machine, random_model, synthetic

from ichdet.data.cache import CacheSettings
from ichdet.data.index import build_index, write_index
from ichdet.data.prepare import dicom_stack, prepare_rows, read_rows
from ichdet.inference.predict import predict
from ichdet.inference.ray_scores import RayOptions
from ichdet.inference.runners import load_runner
from ichdet.util.ray_engine import Engine, mapper

RSNA_SLICES = 874_035
ARCHIVE_SLICES = 10_000_000


def rate(count: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def decode_rate(sources: list[str], size: int) -> float:
    settings = CacheSettings(size=size)
    return rate(len(sources), lambda: [dicom_stack(s, settings) for s in sources])


def model_rate(ckpt: Path, size: int, threads: int, images: int = 96) -> float:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runner = load_runner([ckpt], device="cpu", batch_size=32)
        batch = np.random.default_rng(0).integers(0, 255, (images, 3, size, size), np.uint8)
        runner(batch[:32])  # warm-up
        return rate(images, lambda: runner(batch))
    finally:
        torch.set_num_threads(before)


def interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, the runs alternated, after one warm-up each (whose time
    is kept as ``<name> cold``: Ray's first call starts its workers)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    cold = {}
    for name, fn in runs.items():
        start = time.perf_counter()
        fn()
        cold[f"{name} cold"] = time.perf_counter() - start
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {**{name: statistics.median(t) for name, t in times.items()}, **cold}


def engines(data: Path, index: Path, ckpt: Path, root: Path, cores: int, repeats: int) -> dict:
    """Each stage on both engines, the two interleaved (stage by stage: Ray's workers stay
    warm within a stage, as they do through a long run)."""
    ray_map = mapper(Engine("ray"))
    rows = read_rows(index)
    settings = CacheSettings(size=256)
    options = RayOptions(Engine("ray"), (str(ckpt),), device="cpu", replicas=cores)
    runner = load_runner([ckpt], device="cpu")

    def fresh(name: str) -> Path:
        shutil.rmtree(root / name, ignore_errors=True)
        return root / name

    stages = {
        "index": {
            "local": lambda: build_index(data, workers=cores),
            "ray": lambda: build_index(data, workers=cores, mapper=ray_map),
        },
        "prepare": {
            "local": lambda: prepare_rows(rows, fresh("cl"), settings, workers=cores),
            "ray": lambda: prepare_rows(rows, fresh("cr"), settings, mapper=ray_map),
        },
        "predict": {
            "local": lambda: predict(runner, index, fresh("pl"), workers=cores),
            "ray": lambda: predict(runner, index, fresh("pr"), ray=options),
        },
    }
    found = {}
    for stage, runs in stages.items():
        found.update({f"{stage} {k}": v for k, v in interleaved(runs, repeats).items()})
    return found


#: Bytes of an RSNA slice (512 x 512 x 2 + header) and what a node is assumed to read per
#: second from shared storage (10 GbE / one NVMe): an assumption, not a measurement.
SLICE_MB = 0.53
STORAGE_MB_S = 1000.0


def projection(per_core: float, per_replica: float, ray_factor: float) -> list[str]:
    """Hours for the RSNA set and 10M slices on N nodes of 16 cores, from the measured
    per-core rates: CPU nodes (decode and the model sharing each core, as the CPU replicas
    do) and GPU nodes (15 cores decode for one GPU; the GPU's own rate was not measured)."""
    per_core_both = 1.0 / (1.0 / per_core + 1.0 / per_replica)
    node = 16 * per_core_both * ray_factor
    storage = STORAGE_MB_S / SLICE_MB
    gpu_node = min(15 * per_core * ray_factor, storage)
    lines = [
        f"CPU node (16 cores, decode + model on each core): {node:.0f} images/s",
        f"GPU node: decode on 15 cores {15 * per_core * ray_factor:.0f} images/s, storage at "
        f"{STORAGE_MB_S:.0f} MB/s {storage:.0f} images/s: {gpu_node:.0f} images/s if its GPU "
        "scores at least that fast",
    ]
    for n in (1, 4, 16, 64):
        lines.append(
            f"N={n:>2}: RSNA {RSNA_SLICES / (n * node) / 3600:6.2f} h CPU / "
            f"{RSNA_SLICES / (n * gpu_node) / 60:6.1f} min GPU; "
            f"10M {ARCHIVE_SLICES / (n * node) / 3600:7.1f} h CPU / "
            f"{ARCHIVE_SLICES / (n * gpu_node) / 3600:6.2f} h GPU"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "ichdet-bench")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    args.root.mkdir(parents=True, exist_ok=True)
    data = synthetic(args.root, args.studies, size=512)
    df, errors, report = build_index(data, workers=cores)
    index = write_index(df, errors, report, args.root / "scale-index.parquet")
    ckpt = random_model(args.root, args.model, 256)
    images = len(df)
    print(machine())
    print(f"{images} slices of {df['series_id'].nunique()} series, 512 px; {args.model} at 256")
    per_core = decode_rate(df["source"].tolist()[:200], 256)
    one, every = model_rate(ckpt, 256, 1), model_rate(ckpt, 256, cores)
    print(f"decode+window, 1 core:      {per_core:7.1f} images/s")
    print(f"model, 1 replica, 1 thread: {one:7.1f} images/s ({cores} threads: {every:.1f})")
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    print(f"Ray instance start ({cores} CPUs): {time.perf_counter() - start:.1f} s (not counted)")
    seconds = engines(data, index, ckpt, args.root, cores, args.repeats)
    for stage in ("index", "prepare", "predict"):
        local, there = seconds[f"{stage} local"], seconds[f"{stage} ray"]
        print(
            f"{stage:8s} local {images / local:7.1f} images/s  ray {images / there:7.1f} "
            f"images/s  ratio ray/local {local / there:.2f} (overhead {there / local - 1:+.0%});"
            f" first call local {seconds[f'{stage} local cold']:.2f} s, "
            f"ray {seconds[f'{stage} ray cold']:.2f} s"
        )
    factor = seconds["predict local"] / seconds["predict ray"]
    for line in projection(per_core, one, min(1.0, factor)):
        print(line)


if __name__ == "__main__":
    main()
