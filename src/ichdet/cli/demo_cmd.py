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
    """synth -> index -> prepare -> train one fold on the CPU (the CNN, then the series stage)
    -> evaluate, with result tables."""
    import os
    from dataclasses import replace

    # Same numbers on every x86-64 machine: oneDNN (convolutions) and MKL (matrix products)
    # otherwise pick AVX-512/AMX or AVX2 kernels by CPU, whose different rounding a training
    # run amplifies (measured: a 30-step run differs after one step). Set before torch loads;
    # a value the user set wins. The thread count is pinned in run_demo.
    for name in ("ONEDNN_MAX_CPU_ISA", "MKL_CBWR"):
        os.environ.setdefault(name, "AVX2")

    from ichdet.demo import DemoConfig, print_demo_table, run_demo

    cfg = replace(DemoConfig(), studies=studies, epochs=epochs, workers=workers)
    metrics = run_demo(out, cfg, log=console.print)
    print_demo_table(metrics, console)
    from ichdet.cli.validate_cmd import print_validation

    console.print(f"\nichdet validate of the test split ({out / 'validate' / 'report.html'}):")
    print_validation(metrics["validation"])
