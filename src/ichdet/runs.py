"""Run directories and checkpoints: what a training run leaves behind, and how to read it back."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path, write_text

CHECKPOINT_VERSION = 1


def versions() -> dict[str, str]:
    import numpy
    import pydicom
    import timm

    from . import __version__

    info = {
        "ichdet": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "pydicom": pydicom.__version__,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomic torch.save; every ichdet checkpoint carries the ``ichdet`` version key."""
    payload = {"ichdet": CHECKPOINT_VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "ichdet" not in ckpt:
        raise ValueError(f"{path}: not an ichdet checkpoint")
    return ckpt


def inference_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to predict with: the EMA weights when the run kept them."""
    return ckpt.get("ema") or ckpt["model"]


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def find_checkpoints(model_paths: list[str | os.PathLike]) -> list[Path]:
    """Run dirs (with or without folds) and checkpoint files -> the checkpoints to use.

    A run dir contributes its ``best.pt`` (``last.pt`` if no best), and a run of all folds
    contributes one checkpoint per fold (an ensemble).
    """
    out: list[Path] = []
    for item in map(Path, model_paths):
        if item.is_file():
            out.append(item)
            continue
        if not item.is_dir():
            raise FileNotFoundError(f"{item}: no such run directory or checkpoint")
        folds = sorted(p for p in item.glob("fold_*") if p.is_dir())
        for run in folds or [item]:
            best, last = run / "best.pt", run / "last.pt"
            if best.is_file() or last.is_file():
                out.append(best if best.is_file() else last)
            else:
                raise FileNotFoundError(f"{run}: no best.pt or last.pt")
    if not out:
        raise FileNotFoundError("no checkpoints given")
    return out
