"""Training throughput (img/s) of timm models on random batches: the GPU check of issue 5.

Times full optimiser steps (forward, weighted BCE, backward, AdamW) with the settings `ichdet
train` uses on the device: AMP (bf16 where supported) and channels_last on CUDA, fp32 on the CPU.
Data loading is left out on purpose (benchmarks/bench_dataset.py measures it), so this is the
rate the loader has to feed.

    python benchmarks/bench_train.py                                   # B0@256 and B7@512
    python benchmarks/bench_train.py --pairs tinynet_e:128 --batch 16  # a CPU smoke run
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import machine

from ichdet.models.slice_cnn import ModelConfig, build_model
from ichdet.training.distributed import Dist, Runtime
from ichdet.training.slice_task import weighted_bce


def rate(name: str, size: int, batch: int, steps: int, device: torch.device) -> float:
    amp = device.type == "cuda"
    rt = Runtime(Dist(), device, amp=amp, channels_last=amp)
    model = build_model(ModelConfig(name=name, in_chans=3)).to(device)
    if amp:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 255, (batch, 3, size, size), dtype=torch.uint8, device=device)
    y = (torch.rand(batch, 6, device=device) < 0.1).float()

    def step() -> None:
        inputs = x.float().div(255)
        if amp:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            loss = weighted_bce(model(inputs), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", default="tf_efficientnet_b0:256,tf_efficientnet_b7:512")
    parser.add_argument("--batch", type=int, default=0, help="0: 128 for <= 256 px, else 16")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    card = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"machine: {machine()}; device: {card}")
    print(f"{'model':<22}{'size':>6}{'batch':>7}{'img/s':>10}")
    for pair in args.pairs.split(","):
        name, size = pair.split(":")
        batch = args.batch or (128 if int(size) <= 256 else 16)
        r = rate(name, int(size), batch, args.steps, device)
        print(f"{name:<22}{size:>6}{batch:>7}{r:>10.1f}")


if __name__ == "__main__":
    main()
