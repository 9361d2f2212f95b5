"""Run folders: what a training run writes beside its checkpoints (config, versions, log)."""

from __future__ import annotations

import csv
import io
import platform
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


def write_run_config(out: Path, cfg: LoopConfig, details: dict[str, Any]) -> None:
    """``config.yaml`` (the recipe: ``ichdet train --config`` re-runs it as it is) and
    ``config.json`` (the recipe plus what the run found: versions, devices, data sizes)."""
    how = f"re-run it from the folder it ran in: ichdet train --config {out / 'config.yaml'}"
    write_text(out / "config.yaml", recipe_text(cfg, f"ichdet train recipe of this run; {how}"))
    write_json(out / "config.json", {**details, "versions": versions()})


def write_log(path: Path, history: list[dict]) -> None:
    """One CSV row per epoch (rewritten whole, atomically)."""
    if not history:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buf.getvalue())
