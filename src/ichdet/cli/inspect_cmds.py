"""``ichdet info``, ``ichdet view`` and ``ichdet series``: look at DICOM slices and studies."""

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


def _kind(f: dict) -> str:
    """What selection made of a series, in words (empty for objects that are no image)."""
    if not isinstance(f.get("orientation"), str):
        return ""
    kernel = {"soft": "soft kernel", "sharp": "bone kernel"}.get(f["kernel_class"], "kernel ?")
    contrast = {"contrast": "contrast", "none": "no contrast"}.get(f["contrast"], "contrast ?")
    return f"{f['orientation']}, {kernel}, {contrast}"


def series(
    data: Path = typer.Argument(..., help="a folder (or zip) of DICOM studies"),
    out: Path | None = typer.Option(None, "--out", "-o", help="also write series.csv here"),
    training_mm: float = typer.Option(5.0, help="the model's training slice spacing (mm)"),
    slab: str = typer.Option("auto", help="off | auto | MM, as predict takes it"),
    image_check: bool = typer.Option(True, help="look at 3 slices of each candidate"),
    workers: int = typer.Option(1, help="header-reading processes"),
) -> None:
    """Each study's series, which one predict would read, and why not the others (no model)."""
    from ichdet.data.index import build_index
    from ichdet.selection.choose import SelectionOptions, plan_reads, series_label
    from ichdet.selection.slabs import parse_slab

    try:
        options = SelectionOptions(
            slab=parse_slab(slab), training_mm=training_mm, image_check=image_check
        )
        index, _, report = build_index(data, workers=workers)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    plan = plan_reads(index, report["other_objects"], options)
    for k, study in enumerate(plan.studies.itertuples(index=False), start=1):
        rows = plan.series[plan.series["study_id"] == study.study_id]
        table = Table(
            "series", "slices", "class", "read", "why", title=f"study {k}: {study.status}"
        )
        for _, f in rows.iterrows():
            read = f"yes ({f['slab_slices']}-slice slabs)" if f["slab_slices"] > 1 else "yes"
            table.add_row(
                series_label(f), str(f["slices"]), _kind(f), read if f["read"] else "-", f["reason"]
            )
        console.print(table)
        if study.reason:
            err.print(f"study {k}: NOT ASSESSABLE ({study.reason})", style="bold yellow")
        if study.notes:
            console.print(f"study {k} notes: {study.notes}")
    if out is not None:
        from ichdet.util.tables import write_frame

        console.print(f"wrote {write_frame(out, plan.series.drop(columns=['problems']))}")
