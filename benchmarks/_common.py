"""Helpers shared by the benchmark scripts: a synthetic dataset and a machine description."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )


def synthetic(root: Path, studies: int, size: int = 512, seed: int = 0) -> Path:
    """A synthetic Kaggle-layout dataset under ``root`` (reused if already there)."""
    from ichdet.synth.studies import synthesize

    out = root / f"synth_{studies}_{size}_{seed}"
    if not (out / "synth.json").is_file():
        synthesize(out, studies=studies, seed=seed, size=size, workers=os.cpu_count() or 1)
    return out


def random_model(root: Path, name: str = "efficientnet_b0", size: int = 256) -> Path:
    """An ichdet checkpoint of ``name`` with random weights (speed does not depend on them)."""
    from ichdet.data.cache import CacheSettings
    from ichdet.models.checkpoint import save_checkpoint
    from ichdet.models.slice_cnn import ModelConfig, build_model

    config = ModelConfig(name=name, in_chans=3)
    ckpt = root / "model.pt"
    save_checkpoint(
        ckpt,
        {
            "kind": "slice_cnn",
            "model": build_model(config).state_dict(),
            "model_config": config.to_dict(),
            "context": 0,
            "cache_settings": CacheSettings(size=size).to_dict(),
        },
    )
    return ckpt
