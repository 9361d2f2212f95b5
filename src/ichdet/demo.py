"""``ichdet demo``: the whole pipeline on built-in synthetic data, small enough for a laptop CPU.

synth -> index (5 patient-grouped folds) -> prepare (128 px) -> train fold 0 of a TinyNet-E (an
EfficientNet scaled down) from scratch -> evaluate the held-out fold against the prior-only
baseline. Sizes were chosen by measurement on 2 CPU cores
(see README and benchmarks/RESULTS.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .cache import CacheSettings
from .index import build_index, write_index
from .labels import LABELS
from .prepare import prepare
from .synth import synthesize
from .train import TrainConfig, fit


@dataclass(frozen=True)
class DemoConfig:
    studies: int = 120
    synth_size: int = 160
    size: int = 128
    model: str = "tinynet_e"
    epochs: int = 6
    batch_size: int = 16
    lr: float = 3e-3
    context: int = 0
    seed: int = 0
    workers: int = 2


def run_demo(
    out: str | os.PathLike, cfg: DemoConfig = DemoConfig(), log: Callable[[str], None] = print
) -> dict:
    """Run every stage into ``out``; returns the held-out fold's metrics plus timings."""
    out = Path(out)
    timings: dict[str, float] = {}

    def stage(name: str, start: float) -> None:
        timings[name] = time.perf_counter() - start
        log(f"{name}: done in {timings[name]:.1f}s")

    t = time.perf_counter()
    summary = synthesize(
        out / "data", studies=cfg.studies, seed=cfg.seed, size=cfg.synth_size, workers=cfg.workers
    )
    stage("synth", t)
    log(
        f"  {summary['images']['train']} train + {summary['images']['test']} test slices, "
        f"any-hemorrhage prevalence {summary['prevalence']['any']:.1%}"
    )
    t = time.perf_counter()
    df, errors, report = build_index(out / "data", folds=5, workers=cfg.workers, seed=cfg.seed)
    index_path = write_index(df, errors, report, out / "index.parquet")
    stage("index", t)
    t = time.perf_counter()
    prepare(df, out / "cache", CacheSettings(size=cfg.size), workers=cfg.workers)
    stage("prepare", t)
    t = time.perf_counter()
    train_cfg = TrainConfig(
        index=str(index_path),
        cache=str(out / "cache"),
        out=str(out / "run"),
        fold=0,
        epochs=cfg.epochs,
        model=cfg.model,
        size=cfg.size,
        context=cfg.context,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        workers=min(cfg.workers, 1),
        device="cpu",
    )
    metrics = fit(train_cfg, log=log)
    stage("train", t)
    metrics["timings"] = timings
    return metrics


def print_demo_table(metrics: dict, console: Console) -> None:
    table = Table(
        "label",
        "prevalence",
        "AUC",
        "log loss",
        title=f"held-out fold: {metrics['images']} slices of unseen patients",
    )
    for name in LABELS:
        table.add_row(
            name,
            f"{metrics['prevalence'][name]:.2%}",
            f"{metrics['auc'][name]:.3f}",
            f"{metrics['log_loss'][name]:.4f}",
        )
    console.print(table)
    loss, prior = metrics["weighted_log_loss"], metrics["prior_log_loss"]
    console.print(
        f"weighted log loss {loss:.4f} vs prior-only baseline {prior:.4f} "
        f"(ratio {loss / prior:.2f}); AUC(any) {metrics['auc']['any']:.3f}"
    )
    total = sum(metrics["timings"].values())
    parts = ", ".join(f"{k} {v:.0f}s" for k, v in metrics["timings"].items())
    console.print(f"total {total:.0f}s ({parts})")
