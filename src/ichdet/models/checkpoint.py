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


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
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
