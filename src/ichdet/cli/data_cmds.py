"""``ichdet synth``, ``index``, ``prepare`` and ``eda``: data in, cache and figures out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from ichdet.cli.common import AddressOpt, EngineOpt, console, err, fail

if TYPE_CHECKING:
    import pandas as pd


def synth(
    out: Path = typer.Argument(..., help="output folder (Kaggle layout)"),
    studies: int = typer.Option(30, help="number of studies"),
    seed: int = typer.Option(0, help="random seed (same seed, same files)"),
    size: int = typer.Option(512, help="image rows and columns"),
    test_fraction: float = typer.Option(0.2, help="fraction of patients in stage_2_test"),
    masks: bool = typer.Option(False, "--masks", help="write masks/ID_<sop>.npz per lesion slice"),
    workers: int = typer.Option(1, help="parallel processes"),
    series: str = typer.Option(
        "",
        help="other series per study beside the labelled axial one, comma-separated or 'all': "
        "localizer, bone, coronal, sagittal, contrast, thin, dose-sr, chest",
    ),
) -> None:
    """Write labelled synthetic head-CT studies in the RSNA Kaggle layout."""
    import time

    from ichdet.synth.studies import synthesize
    from ichdet.synth.variants import parse_variants
    from ichdet.util.progress import progress_bar

    try:
        variants = parse_variants(series)
    except ValueError as exc:
        fail(str(exc))
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
            series=variants,
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


def _mapper(engine: str, address: str | None, workers: int) -> Callable[..., list]:
    """How index/prepare spread their work: this machine's processes, or Ray tasks (every
    node must see the same paths: the data, and for prepare the cache)."""
    from ichdet.util.ray_engine import Engine as Where
    from ichdet.util.ray_engine import connect, mapper

    where = Where(engine, address)
    if where.is_ray:
        connect(where, workers)
    return mapper(where, workers)


def index(
    data: Path = typer.Argument(
        ..., help="Kaggle folder or .zip, a DICOM folder, or an image folder"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="index parquet to write"),
    folds: int = typer.Option(0, help="K patient-grouped folds (0: none)"),
    labels: Path | None = typer.Option(
        None, help="labels CSV (Kaggle long form, or wide with an 'image' column for image folders)"
    ),
    study_labels: Path | None = typer.Option(
        None,
        help="study-level labels CSV: study_id (or patient_id) + label columns, one row per study",
    ),
    workers: int = typer.Option(1, help="parallel processes"),
    seed: int = typer.Option(0, help="fold seed"),
    masks: Path | None = typer.Option(
        None,
        help="hemorrhage masks to join by geometry: per-slice .npz (ichdet synth --masks), "
        "NIfTI label maps or DICOM SEG (README: Masks)",
    ),
    mask_labels: str | None = typer.Option(
        None,
        help="NIfTI label values, e.g. 1=intraparenchymal,2=intraventricular "
        "(default 1..5 = epidural, intraparenchymal, intraventricular, subarachnoid, subdural)",
    ),
    engine: EngineOpt = "local",
    address: AddressOpt = None,
) -> None:
    """One row per readable image: ids, z, split, source, labels, fold (+ masks)."""
    from ichdet.data.index import build_index, write_index
    from ichdet.util.progress import progress_bar

    try:
        spread = _mapper(engine, address, workers)
        with progress_bar(None, "index") as advance:
            df, errors, report = build_index(
                data,
                labels=labels,
                study_labels=study_labels,
                folds=folds or None,
                workers=workers,
                seed=seed,
                progress=advance,
                total=advance.set_total,
                mapper=spread,
            )
        if masks is not None:
            df, errors, report = _join_masks(df, errors, report, masks, mask_labels, out)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        fail(str(exc))
    write_index(df, errors, report, out)
    _print_index(df, errors, report, out)


def _print_index(df: pd.DataFrame, errors: pd.DataFrame, report: dict, out: Path) -> None:
    from ichdet.data.index import index_paths

    _, errors_path, _ = index_paths(out)
    console.print(f"indexed {len(df)} images ({report['by_split']}) -> {out}")
    if "labels_without_images" in report:
        console.print(
            f"images without labels: {report['images_without_labels']}, "
            f"labels without images: {report['labels_without_images']}"
        )
    if "study_labels" in report:
        found = report["study_labels"]
        console.print(
            f"study labels: {found['studies']} studies labelled, "
            f"{found['rows_without_study']} label rows match no study"
        )
    if len(errors):
        err.print(f"skipped {len(errors)} file(s); reasons in {errors_path}", style="yellow")
        for source, reason in errors.head(5).itertuples(index=False):
            err.print(f"  {source}: {reason}")


def _join_masks(
    df: pd.DataFrame,
    errors: pd.DataFrame,
    report: dict,
    masks: Path,
    mask_labels: str | None,
    out: Path,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The index with its masks joined (``ichdet.data.mask_join``); mask errors join the
    index's errors, the counts its report."""
    import pandas as pd

    from ichdet.data.mask_join import attach_masks, parse_label_map

    folder = out.with_name(out.with_suffix("").name + ".masks")
    df, problems, found = attach_masks(df, masks, folder, parse_label_map(mask_labels))
    console.print(
        f"masks ({found['layout']}): {found['slices_known']} slices of {found['series_known']} "
        f"series known, {found['slices_with_blood']} with blood"
    )
    extra = pd.DataFrame(problems, columns=["source", "reason"])
    return df, pd.concat([errors, extra], ignore_index=True), {**report, "masks": found}


def import_nifti(
    images: Path = typer.Argument(..., help="folder of CT volumes (.nii/.nii.gz, in HU)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for dicom/ and masks/"),
    labels: Path | None = typer.Option(
        None, help="folder of label maps named as the volumes (INSTANCE/BHSD style)"
    ),
    mask_labels: str | None = typer.Option(
        None, help="label values, e.g. 1=intraparenchymal (default 1..5 = the subtypes A-Z)"
    ),
) -> None:
    """NIfTI CT volumes (+ label maps) -> DICOM series (+ per-slice masks), for index --masks."""
    from ichdet.data.mask_join import parse_label_map
    from ichdet.data.nifti_import import import_nifti as convert
    from ichdet.util.progress import progress_bar

    try:
        label_map = parse_label_map(mask_labels)
        with progress_bar(None, "import") as advance:
            volumes, slices, failed = convert(images, out, labels, label_map, advance)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    console.print(
        f"{volumes} volume(s), {slices} slices -> {out / 'dicom'}"
        + (f", masks in {out / 'masks'}" if labels else "")
    )
    if labels:
        console.print(
            f"next: ichdet index {out / 'dicom'} --out INDEX --folds 5 --masks {out / 'masks'}"
        )
    for path, reason in failed:
        err.print(f"skipped {path}: {reason}", style="yellow")


def prepare(
    index_file: Path = typer.Argument(..., metavar="INDEX", help="index parquet"),
    out: Path = typer.Option(..., "--out", "-o", help="cache root folder"),
    size: int = typer.Option(256, help="output rows and columns"),
    windows: str = typer.Option("brain,subdural,bone", help="windows: preset names or C/W"),
    window_kind: str = typer.Option("clip", help="clip | sigmoid | blackout_minmax"),
    fmt: str = typer.Option(
        "zstd",
        "--format",
        help="zstd (default, fastest compressed) | zlib | png (viewable) | npy (raw, largest)",
    ),
    workers: int = typer.Option(1, help="parallel processes"),
    verify: bool = typer.Option(
        False, "--verify", help="decode every existing entry; redo damaged ones"
    ),
    engine: EngineOpt = "local",
    address: AddressOpt = None,
) -> None:
    """Resized uint8 window stacks for every indexed image (resumable)."""
    import time

    from ichdet.data.cache import CacheSettings
    from ichdet.data.prepare import cache_size_bytes, prepare_rows, read_rows
    from ichdet.data.windows import parse_windows
    from ichdet.util.progress import progress_bar

    try:
        settings = CacheSettings(
            size=size, windows=parse_windows(windows), window_kind=window_kind, format=fmt
        )
        rows = read_rows(index_file)
        spread = _mapper(engine, address, workers)
    except (OSError, ValueError, ImportError) as exc:
        fail(str(exc))
    start = time.perf_counter()
    with progress_bar(None, "prepare") as advance:
        directory, written, existing, errors = prepare_rows(
            rows,
            out,
            settings,
            workers=workers,
            progress=advance,
            total=advance.set_total,
            verify=verify,
            mapper=spread,
        )
    seconds = time.perf_counter() - start
    rate = f" ({written / seconds:.0f} images/s)" if written else ""
    console.print(
        f"cache {directory}: wrote {written}, already there {existing}, "
        f"failed {len(errors)} in {seconds:.1f}s{rate}; "
        f"{cache_size_bytes(directory) / 2**20:.1f} MiB"
    )
    if len(errors):
        err.print(
            f"skipped {len(errors)} image(s); reasons in {directory / 'errors.csv'}",
            style="yellow",
        )


def eda(
    index_file: Path = typer.Argument(..., metavar="INDEX", help="index parquet"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for figures and summary.md"),
) -> None:
    """Label prevalence, co-occurrence, slices per study, positions, example slices."""
    from ichdet.data.index import read_index
    from ichdet.reports.eda import run_eda

    try:
        files = run_eda(read_index(index_file), out)
    except ValueError as exc:
        fail(str(exc))
    for name, path in files.items():
        console.print(f"{name}: {path}")
