"""``ichdet info`` and ``ichdet view``: look at DICOM slices."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.table import Table

from ichdet.cli.common import console, err, fail


def info(
    files: list[Path] = typer.Argument(..., help="DICOM files"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
    allow_non_ct: bool = typer.Option(False, help="accept modalities other than CT"),
) -> None:
    """Header summary and HU range of DICOM slices."""
    from ichdet.dicom.read import DicomError, read_slice

    table = Table(
        "file", "sop", "series", "z", "size", "spacing", "window", "HU min", "HU max", "fixes"
    )
    failed: list[str] = []
    for path in files:
        try:
            sl = read_slice(path, require_ct=not allow_non_ct)
        except DicomError as exc:
            failed.append(str(exc))
            err.print(f"skipped {exc}", style="yellow")
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


def view(
    file: Path = typer.Argument(..., help="a DICOM file"),
    out: Path = typer.Option(..., "--out", "-o", help="PNG to write"),
    windows: str = typer.Option("brain,subdural,bone", help="windows: preset names or C/W"),
) -> None:
    """Panels of one slice: stored values, HU, each window, and the window composite."""
    from ichdet.data.windows import parse_windows
    from ichdet.dicom.read import DicomError, read_slice
    from ichdet.reports.viz import slice_panels

    try:
        sl = read_slice(file)
        slice_panels(sl, out, parse_windows(windows), title=file.name)
    except (DicomError, ValueError) as exc:
        fail(str(exc))
    console.print(f"wrote {out}")
