"""The ``ichdet`` command line: a thin typer layer over the library's stages.

Heavy modules (torch, timm, pandas) are imported inside the commands that need them, so that
``ichdet --help`` and the ONNX inference path start fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="ichdet",
    help="Intracranial hemorrhage detection on head CT (RSNA 2019 labels).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.command()
def info(
    files: list[Path] = typer.Argument(..., help="DICOM files"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
    allow_non_ct: bool = typer.Option(False, help="accept modalities other than CT"),
) -> None:
    """Header summary and HU range of DICOM slices."""
    from .dicom import DicomError, read_slice

    table = Table(
        "file", "sop", "series", "z", "size", "spacing", "window", "HU min", "HU max", "fixes"
    )
    failed: list[str] = []
    for path in files:
        try:
            sl = read_slice(path, require_ct=not allow_non_ct)
        except DicomError as exc:
            failed.append(str(exc))
            err.print(f"[yellow]skipped[/yellow] {exc}")
            continue
        m = sl.meta
        if as_json:
            record = {
                "file": str(path),
                **m.to_dict(),
                "hu_min": float(sl.hu.min()),
                "hu_max": float(sl.hu.max()),
            }
            sys.stdout.write(json.dumps(record) + "\n")
            continue
        spacing = "x".join(f"{v:.3g}" for v in m.pixel_spacing) if m.pixel_spacing else "?"
        window = f"{m.window_center:g}/{m.window_width:g}" if m.window_width else "-"
        table.add_row(
            path.name,
            m.sop_instance_uid[-16:],
            m.series_instance_uid[-12:],
            f"{m.z:.2f}",
            f"{m.rows}x{m.columns}",
            spacing,
            window,
            f"{sl.hu.min():.0f}",
            f"{sl.hu.max():.0f}",
            ",".join(m.fixes) or "-",
        )
    if not as_json and table.row_count:
        console.print(table)
    if failed:
        err.print(f"{len(failed)} of {len(files)} file(s) skipped")
        raise typer.Exit(1)


@app.command()
def view(
    file: Path = typer.Argument(..., help="a DICOM file"),
    out: Path = typer.Option(..., "--out", "-o", help="PNG to write"),
    windows: str = typer.Option("brain,subdural,bone", help="windows: preset names or C/W"),
) -> None:
    """Panels of one slice: stored values, HU, each window, and the window composite."""
    from .dicom import DicomError, read_slice
    from .viz import slice_panels
    from .windows import parse_windows

    try:
        sl = read_slice(file)
        slice_panels(sl, out, parse_windows(windows), title=file.name)
    except (DicomError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"wrote {out}")


@app.command()
def synth(
    out: Path = typer.Argument(..., help="output folder (Kaggle layout)"),
    studies: int = typer.Option(30, help="number of studies"),
    seed: int = typer.Option(0, help="random seed (same seed, same files)"),
    size: int = typer.Option(512, help="image rows and columns"),
    test_fraction: float = typer.Option(0.2, help="fraction of patients in stage_2_test"),
    masks: bool = typer.Option(False, "--masks", help="write masks/ID_<sop>.npz per lesion slice"),
    workers: int = typer.Option(1, help="parallel processes"),
) -> None:
    """Write labelled synthetic head-CT studies in the RSNA Kaggle layout."""
    import time

    from .progress import progress_bar
    from .synth import synthesize

    start = time.perf_counter()
    with progress_bar(None, "synth") as advance:
        summary = synthesize(
            out,
            studies=studies,
            seed=seed,
            size=size,
            test_fraction=test_fraction,
            masks=masks,
            workers=workers,
            progress=advance,
        )
    seconds = time.perf_counter() - start
    images = summary["images"]["train"] + summary["images"]["test"]
    table = Table("label", "prevalence (all slices)")
    for name, value in summary["prevalence"].items():
        table.add_row(name, f"{value:.2%}")
    console.print(table)
    console.print(
        f"wrote {images} slices ({summary['images']['train']} train, "
        f"{summary['images']['test']} test) of {studies} studies to {out} "
        f"in {seconds:.1f}s ({images / seconds:.0f} slices/s)"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
