"""The demo's training step on the CPU, and what its data path costs: side by side in one run.

Builds a small demo data set (phantoms with masks, 128 px cache), then times, alternating:

- the batch augmentation: ichdet's (one ``grid_sample`` per batch, flip folded into the affine)
  against kornia's ``AugmentationSequential`` of the same flip and affine, when kornia is
  installed (ichdet no longer needs it);
- the demo's training loop (TinyNet-D with its mask head, channels_last, batch 16, AdamW) fed by
  a DataLoader with 0 workers (the batches read in the training process) and with 1 worker.

    python benchmarks/bench_train_step.py [--studies 24] [--steps 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import machine
from torch.utils.data import DataLoader

from ichdet.data.augment import random_affine_matrices, warp
from ichdet.demo import DemoConfig, make_data, train_config
from ichdet.training.distributed import make_runtime
from ichdet.training.slice_task import SliceTask


def kornia_augment() -> Any:
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    return K.AugmentationSequential(
        K.RandomHorizontalFlip(p=0.5),
        K.RandomAffine(
            degrees=10.0, translate=(0.05, 0.05), scale=(0.9, 1.1), p=0.7, padding_mode="zeros"
        ),
    )


def ms_per_call(fn: Any, calls: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def augment_rates(batch: torch.Tensor, rounds: int) -> dict[str, float]:
    theirs = kornia_augment()

    def ours() -> None:
        warp(batch, random_affine_matrices(len(batch)))

    times: dict[str, list[float]] = {"ichdet": [], "kornia": []}
    for _ in range(rounds):
        times["ichdet"].append(ms_per_call(ours, 20))
        if theirs is not None:
            times["kornia"].append(ms_per_call(lambda: theirs(batch), 20))
    return {k: min(v) for k, v in times.items() if v}


def loop_ms(task: SliceTask, workers: int, steps: int) -> float:
    rt = make_runtime("cpu", False, True)
    model = task.build_model().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-3)
    loader = DataLoader(task.train_set, batch_size=16, shuffle=True, num_workers=workers)
    done, start = 0, 0.0
    while done < steps + 3:  # as many passes as the steps need (a worker starts each pass)
        for batch in loader:
            if done == 3:
                start = time.perf_counter()  # after the warm-up
            loss, _ = task.loss(model, batch, rt)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps + 3:
                break
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = DemoConfig(studies=args.studies)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        make_data(out, cfg, lambda name, start: None, lambda line: None)
        task = SliceTask(dataclasses.replace(train_config(cfg, out), out=str(out / "run")))
        print(f"machine: {machine()}")
        print(f"{len(task.train_set)} training slices, {cfg.size} px, batch 16, {cfg.model}")
        x = torch.rand(16, 3 + 5, cfg.size, cfg.size)  # 3 windows + 5 masks, as the step has
        rates = augment_rates(x, args.rounds)
        line = f"augment (flip + affine), ms per batch: ichdet {rates['ichdet']:.1f}"
        if "kornia" in rates:
            line += f", kornia {rates['kornia']:.1f} -> {rates['kornia'] / rates['ichdet']:.2f}x"
        print(line if "kornia" in rates else f"{line} (kornia not installed)")
        times: dict[int, list[float]] = {0: [], 1: []}
        for _ in range(args.rounds):
            for workers in (0, 1):
                times[workers].append(loop_ms(task, workers, args.steps))
        best = {w: min(t) for w, t in times.items()}
        print(
            f"training loop, ms per step (best of {args.rounds}): 0 workers {best[0]:.1f}, "
            f"1 worker {best[1]:.1f} -> 0 workers {best[1] / best[0]:.2f}x the images/s"
        )


if __name__ == "__main__":
    main()
