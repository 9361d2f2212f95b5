"""``ichdet demo``: the whole pipeline on synthetic data."""

from __future__ import annotations

from pathlib import Path

import typer

from ichdet.cli.common import console


def demo(
    out: Path = typer.Option(Path("demo-run"), "--out", "-o", help="working folder"),
    studies: int = typer.Option(260, help="synthetic studies"),
    epochs: int = typer.Option(7),
    workers: int = typer.Option(2, help="parallel processes for synth/index/prepare"),
    segment: bool = typer.Option(
        False, "--segment", help="also train the segmenter and measure volumes (~8 min more)"
    ),
) -> None:
    """synth -> index -> prepare -> train one fold on the CPU (the CNN, then the series stage)
    -> evaluate, with result tables."""
    import os
    import platform
    from dataclasses import replace

    # Fewer differences between x86-64 machines: oneDNN (convolutions), MKL (matrix products)
    # and ATen's own vectorised kernels (reductions: batch norm, softmax, the loss, the
    # optimizer) otherwise pick AVX-512/AMX or AVX2 code by CPU, whose different rounding a
    # training run amplifies (benchmarks/bench_repro.py). Set before torch loads; a value the
    # user set wins. The thread count is pinned in run_demo. What still differs between CPU
    # vendors is in the README ("Reproducible demo numbers").
    if platform.machine().lower() in ("x86_64", "amd64"):
        for name, value in (
            ("ONEDNN_MAX_CPU_ISA", "AVX2"),
            ("MKL_CBWR", "AVX2"),
            ("ATEN_CPU_CAPABILITY", "avx2"),
        ):
            os.environ.setdefault(name, value)

    from ichdet.demo import DemoConfig, print_demo_table, run_demo

    cfg = replace(DemoConfig(), studies=studies, epochs=epochs, workers=workers, segment=segment)
    metrics = run_demo(out, cfg, log=console.print)
    print_demo_table(metrics, console)
    from ichdet.cli.validate_cmd import print_validation

    console.print(f"\nichdet validate of the test split ({out / 'validate' / 'report.html'}):")
    print_validation(metrics["validation"])
