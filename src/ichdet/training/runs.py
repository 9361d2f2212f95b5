"""Run folders: what a training run writes beside its checkpoints (config, versions, log)."""

from __future__ import annotations

import csv
import io
import platform
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ichdet.training.config import LoopConfig, recipe_text
from ichdet.util.atomic import write_text
from ichdet.util.jsonio import write_json


def versions() -> dict[str, str]:
    import numpy
    import pydicom
    import timm

    from ichdet import __version__

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


#: Settings that are local paths: in the run's own recipe (relative where possible), never in
#: checkpoints, which travel to other machines.
PATH_FIELDS = ("index", "cache", "out", "weights", "cnn")
#: What a run writes into its folder (``--force`` removes these, and nothing else).
RUN_FILES = (
    "config.yaml",
    "config.json",
    "log.csv",
    "last.pt",
    "best.pt",
    "metrics.json",
    "valid_predictions.csv",
    "thresholds.json",
    "oof_predictions.csv",
    "cv.json",
    "valid_studies.csv",
    "oof_studies.csv",
    "embeddings.npz",  # the series stage's inputs, made by this run's CNN
    "embeddings_tta.npz",
)


def check_run_folder(out: Path, resume: bool, force: bool) -> None:
    """A new run never writes into a folder holding an earlier one (its thresholds.json would
    sit beside the new weights until the end): refuse, or with ``force`` remove its files."""
    if resume or not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise ValueError(f"{out}: holds an earlier run; --resume continues it, --force replaces it")
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def portable(path: str | None) -> str | None:
    """A path relative to the working folder when it lies inside it; else as given."""
    if not path:
        return path
    try:
        relative = Path(path).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path
    return str(relative)


def portable_config(cfg: LoopConfig) -> LoopConfig:
    paths: dict[str, Any] = {k: portable(getattr(cfg, k)) for k in PATH_FIELDS if hasattr(cfg, k)}
    return replace(cfg, **paths)


def checkpoint_config(cfg: LoopConfig) -> dict[str, Any]:
    """The settings a checkpoint keeps: all but local paths."""
    return {k: v for k, v in cfg.to_dict().items() if k not in PATH_FIELDS}


def write_run_config(out: Path, cfg: LoopConfig, details: dict[str, Any]) -> None:
    """``config.yaml`` (the recipe: ``ichdet train --config`` re-runs it as it is) and
    ``config.json`` (the recipe plus what the run found: versions, devices, data sizes)."""
    cfg = portable_config(cfg)
    how = f"re-run it from the folder it ran in: ichdet train --config {out / 'config.yaml'}"
    write_text(out / "config.yaml", recipe_text(cfg, f"ichdet train recipe of this run; {how}"))
    write_json(
        out / "config.json", {**details, "train_config": cfg.to_dict(), "versions": versions()}
    )


def write_log(path: Path, history: list[dict]) -> None:
    """One CSV row per epoch (rewritten whole, atomically)."""
    if not history:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buf.getvalue())
