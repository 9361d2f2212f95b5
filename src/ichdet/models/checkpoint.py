"""Checkpoints: what a trained model is saved as, and finding them in run directories.

A checkpoint is a dict with the format version under ``ichdet``, the model ``kind`` (the key of
``ichdet.models.registry``), ``model_config`` (what the registry builds from), ``model`` (and
``ema``) state dicts, and the settings the model's inputs were made with. Checkpoints written
before kinds existed hold a slice CNN and read as ``kind: slice_cnn``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ichdet.util.atomic import atomic_path

CHECKPOINT_VERSION = 1
#: The kind of checkpoints written before the key existed.
DEFAULT_KIND = "slice_cnn"


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomic torch.save; every ichdet checkpoint carries the format version and its kind."""
    if "kind" not in payload:
        raise ValueError("a checkpoint must say its model kind")
    payload = {"ichdet": CHECKPOINT_VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load`` that runs no code: tensors, dicts, lists, numbers and strings only.

    Anything else (a crafted pickle, a truncated or foreign file) is a one-line ValueError.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ValueError(f"{path}: not a valid checkpoint or weights file ({reason})") from None


def read_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """A local weights file (.pt/.pth/.bin via :func:`read_torch_file`, or .safetensors) -> the
    dict it holds; an ichdet checkpoint stays whole, a timm/torchvision checkpoint is unwrapped
    to its state dict (EMA weights first, as timm does)."""
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(os.fspath(path)))
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{path}: not a valid safetensors file ({exc})") from None
    loaded = read_torch_file(path)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
    if "ichdet" in loaded:
        return loaded
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(loaded.get(key), dict):
            return loaded[key]
    return loaded


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """An ichdet checkpoint, loaded without running code; ValueError for anything else."""
    ckpt = read_torch_file(path)
    if not isinstance(ckpt, dict) or "ichdet" not in ckpt:
        raise ValueError(f"{path}: not an ichdet checkpoint")
    ckpt.setdefault("kind", DEFAULT_KIND)
    return ckpt


def inference_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to predict with: the EMA weights when the run kept them."""
    return ckpt.get("ema") or ckpt["model"]


def find_checkpoints(model_paths: Sequence[str | os.PathLike]) -> list[Path]:
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
