"""``ichdet demo``: the whole pipeline on synthetic data."""

from __future__ import annotations

from pathlib import Path

import typer

from ichdet.cli.common import console


def demo(
    out: Path = typer.Option(Path("demo-run"), "--out", "-o", help="working folder"),
    studies: int = typer.Option(200, help="synthetic studies"),
    epochs: int = typer.Option(4),
    workers: int = typer.Option(2, help="parallel processes for synth/index/prepare"),
) -> None:
    """synth -> index -> prepare -> train one fold on the CPU -> evaluate, with a result table."""
    from dataclasses import replace

    from ichdet.demo import DemoConfig, print_demo_table, run_demo

    cfg = replace(DemoConfig(), studies=studies, epochs=epochs, workers=workers)
    metrics = run_demo(out, cfg, log=console.print)
    print_demo_table(metrics, console)
