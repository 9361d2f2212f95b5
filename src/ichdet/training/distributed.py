"""Where training runs: device, DDP ranks under ``torchrun``, seeding, autocast, gathering."""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Dist:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


@dataclass
class Runtime:
    """Device and numeric settings of one training process."""

    dist: Dist
    device: torch.device
    amp: bool
    channels_last: bool

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast (fp16 on CUDA cards without bf16), or nothing when AMP is off."""
        if not self.amp:
            return nullcontext()
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", dtype=torch.bfloat16)

    @property
    def fp16(self) -> bool:
        """True when AMP runs in fp16 and needs a gradient scaler."""
        return self.amp and self.device.type == "cuda" and not torch.cuda.is_bf16_supported()


def setup_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    """Read torchrun's environment, pick the device, join the process group (nccl/gloo)."""
    if device_pref not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, not {device_pref!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    d = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    device = torch.device(f"cuda:{d.local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if d.active and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return d, device


def make_runtime(device_pref: str, amp: bool | None, channels_last: bool | None) -> Runtime:
    """A Runtime whose unset options follow the device (AMP and channels_last on for CUDA)."""
    d, device = setup_distributed(device_pref)
    cuda = device.type == "cuda"
    return Runtime(
        d,
        device,
        amp=cuda if amp is None else amp,
        channels_last=cuda if channels_last is None else channels_last,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def gather_rows(d: Dist, total: int, indices: list[int], rows: np.ndarray) -> np.ndarray:
    """Every rank's ``rows`` (at dataset positions ``indices``) merged into one array.

    DistributedSampler pads by repeating positions; the repeats hold identical values.
    """
    if not d.active:
        return rows
    parts: list = [None] * d.world
    dist.all_gather_object(parts, (indices, rows))
    merged = np.zeros((total, *rows.shape[1:]), rows.dtype)
    for idx, part in parts:
        merged[np.asarray(idx, dtype=np.int64)] = part
    return merged
