"""channels_last (NHWC) against the default layout (NCHW) on this machine's CPU, side by side in
one run: optimiser steps (what `ichdet train --channels-last` changes) and inference embedding
passes (what predict and the series stage's embedding use), for the demo's models.

    python benchmarks/bench_memory_format.py [--models tinynet_e,tinynet_d] [--size 128]

Each setting is timed twice, alternating, and the better of the two kept (the machine's speed
drifts); the ratio is NHWC over NCHW images per second.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import machine

from ichdet.models.slice_cnn import ModelConfig, build_model
from ichdet.training.slice_task import weighted_bce


def _layout(t: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)


def train_rate(name: str, size: int, batch: int, steps: int, nhwc: bool) -> float:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name)).train()
    model = model.to(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = _layout(torch.rand(batch, 3, size, size), nhwc)
    y = (torch.rand(batch, 6) > 0.8).float()
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            start = time.perf_counter()
        weighted_bce(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return steps * batch / (time.perf_counter() - start)


def embed_rate(name: str, size: int, batch: int, steps: int, nhwc: bool) -> float:
    model = build_model(ModelConfig(name=name)).eval()
    model = model.to(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    x = _layout(torch.rand(batch, 3, size, size), nhwc)
    with torch.inference_mode():
        model.embed(x)
        start = time.perf_counter()
        for _ in range(steps):
            model.embed(x)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="tinynet_e,tinynet_d")
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{'model':<12} {'pass':<22} {'NCHW img/s':>11} {'NHWC img/s':>11} {'ratio':>6}")
    for name in args.models.split(","):
        for label, fn, batch, steps in (
            ("train (batch 16)", train_rate, 16, 10),
            ("embed (batch 64)", embed_rate, 64, 4),
        ):
            best = {False: 0.0, True: 0.0}
            for _ in range(2):
                for nhwc in (False, True):
                    best[nhwc] = max(best[nhwc], fn(name, args.size, batch, steps, nhwc))
            ratio = best[True] / best[False]
            print(f"{name:<12} {label:<22} {best[False]:>11.1f} {best[True]:>11.1f} {ratio:>5.2f}x")


if __name__ == "__main__":
    main()
