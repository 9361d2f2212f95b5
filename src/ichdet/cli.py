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
# logs and CI capture output without a terminal; rich would then wrap at 80 columns
# markup off: file names and reasons may hold [brackets]
console = Console(width=None if sys.stdout.isatty() else 120, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"error: {message}", style="red")
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


@app.command()
def index(
    data: Path = typer.Argument(
        ..., help="Kaggle folder or .zip, a DICOM folder, or an image folder"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="index parquet to write"),
    folds: int = typer.Option(0, help="K patient-grouped folds (0: none)"),
    labels: Path | None = typer.Option(
        None, help="labels CSV (Kaggle long form, or wide with an 'image' column for image folders)"
    ),
    workers: int = typer.Option(1, help="parallel processes"),
    seed: int = typer.Option(0, help="fold seed"),
) -> None:
    """One row per readable image: ids, z, split, source, labels, fold."""
    from .index import build_index, index_paths, write_index
    from .progress import progress_bar

    try:
        with progress_bar(None, "index") as advance:
            df, errors, report = build_index(
                data,
                labels=labels,
                folds=folds or None,
                workers=workers,
                seed=seed,
                progress=advance,
                total=advance.set_total,
            )
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    write_index(df, errors, report, out)
    _, errors_path, report_path = index_paths(out)
    console.print(f"indexed {len(df)} images ({report['by_split']}) -> {out}")
    if "labels_without_images" in report:
        console.print(
            f"images without labels: {report['images_without_labels']}, "
            f"labels without images: {report['labels_without_images']}"
        )
    if len(errors):
        err.print(f"skipped {len(errors)} file(s); reasons in {errors_path}", style="yellow")
        for source, reason in errors.head(5).itertuples(index=False):
            err.print(f"  {source}: {reason}")


@app.command()
def prepare(
    index_file: Path = typer.Argument(..., metavar="INDEX", help="index parquet"),
    out: Path = typer.Option(..., "--out", "-o", help="cache root folder"),
    size: int = typer.Option(256, help="output rows and columns"),
    windows: str = typer.Option("brain,subdural,bone", help="windows: preset names or C/W"),
    window_kind: str = typer.Option("clip", help="clip | sigmoid | blackout_minmax"),
    fmt: str = typer.Option(
        "zlib",
        "--format",
        help="zlib (default) | png (viewable, smallest) | npy (raw, fastest reads)",
    ),
    workers: int = typer.Option(1, help="parallel processes"),
) -> None:
    """Resized uint8 window stacks for every indexed image (resumable)."""
    import time

    from .cache import CacheSettings
    from .index import read_index
    from .prepare import cache_size_bytes
    from .prepare import prepare as run_prepare
    from .progress import progress_bar
    from .windows import parse_windows

    try:
        settings = CacheSettings(
            size=size, windows=parse_windows(windows), window_kind=window_kind, format=fmt
        )
    except ValueError as exc:
        _fail(str(exc))
    df = read_index(index_file)
    start = time.perf_counter()
    with progress_bar(None, "prepare") as advance:
        directory, written, existing, errors = run_prepare(
            df,
            out,
            settings,
            workers=workers,
            progress=advance,
            total=advance.set_total,
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


@app.command()
def eda(
    index_file: Path = typer.Argument(..., metavar="INDEX", help="index parquet"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for figures and summary.md"),
) -> None:
    """Label prevalence, co-occurrence, slices per study, positions, example slices."""
    from .eda import run_eda
    from .index import read_index

    try:
        files = run_eda(read_index(index_file), out)
    except ValueError as exc:
        _fail(str(exc))
    for name, path in files.items():
        console.print(f"{name}: {path}")


@app.command()
def train(
    index_file: Path = typer.Argument(..., metavar="INDEX", help="index parquet with folds"),
    cache: Path = typer.Option(..., help="cache root (from `ichdet prepare`) or its folder"),
    out: Path = typer.Option(..., "--out", "-o", help="run directory"),
    fold: str = typer.Option("0", help="fold number, or 'all' for every fold (CV)"),
    epochs: int = typer.Option(5),
    model: str = typer.Option("tf_efficientnet_b0", help="any timm model name"),
    size: int = typer.Option(256, help="input size (a cache of this size must exist)"),
    windows: str = typer.Option("brain,subdural,bone", help="the cache's windows"),
    context: int = typer.Option(0, help="neighbour slices on each side as extra channels"),
    batch_size: int = typer.Option(32),
    lr: float = typer.Option(1e-3),
    weight_decay: float = typer.Option(1e-2),
    warmup_epochs: float = typer.Option(0.5),
    accumulate: int = typer.Option(1, help="gradient accumulation steps"),
    amp: bool | None = typer.Option(
        None, "--amp/--no-amp", help="mixed precision (default: on for CUDA)"
    ),
    ema: float = typer.Option(0.0, help="EMA decay, e.g. 0.999 (0: off)"),
    augment: bool = typer.Option(True, "--augment/--no-augment"),
    drop_path: float = typer.Option(0.0),
    pretrained: bool = typer.Option(False, "--pretrained", help="timm hub weights"),
    weights: Path | None = typer.Option(
        None, help="local weights: timm state dict/checkpoint or ichdet checkpoint"
    ),
    workers: int = typer.Option(2, help="data loader processes"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto | cuda | cpu"),
    target_sensitivity: float = typer.Option(0.95, help="for the operating thresholds"),
    resume: bool = typer.Option(False, "--resume", help="continue from RUN/last.pt"),
) -> None:
    """Train EfficientNet (any timm model) on one fold or all folds; validate every epoch."""
    from .train import TrainConfig, fit, fit_all

    cfg = TrainConfig(
        index=str(index_file),
        cache=str(cache),
        out=str(out),
        fold=0 if fold == "all" else int(fold),
        epochs=epochs,
        model=model,
        size=size,
        windows=windows,
        context=context,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        accumulate=accumulate,
        amp=amp,
        ema=ema,
        augment=augment,
        drop_path=drop_path,
        pretrained=pretrained,
        weights=str(weights) if weights else None,
        workers=workers,
        seed=seed,
        device=device,
        target_sensitivity=target_sensitivity,
    )
    try:
        if fold == "all":
            cv = fit_all(cfg, resume=resume, log=console.print)
            if cv:
                console.print(
                    f"CV weighted log loss {cv['cv_weighted_log_loss']:.4f} "
                    f"(prior baseline {cv['prior_log_loss']:.4f}) -> {out}"
                )
        else:
            report = fit(cfg, resume=resume, log=console.print)
            console.print(
                f"fold {cfg.fold}: weighted log loss {report['weighted_log_loss']:.4f} "
                f"(prior baseline {report['prior_log_loss']:.4f}), "
                f"AUC(any) {report['auc']['any']:.3f} -> {out}"
            )
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))


@app.command()
def evaluate(
    predictions: Path = typer.Argument(..., help="predictions CSV (Kaggle form ID,Label)"),
    labels: Path = typer.Argument(..., help="labels CSV (Kaggle form ID,Label)"),
    threshold: float = typer.Option(0.5, help="threshold for sensitivity/specificity"),
    target_sensitivity: float = typer.Option(0.95, help="for the per-label operating points"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    save_thresholds: Path | None = typer.Option(
        None, help="write the operating thresholds (JSON) here, e.g. RUN/thresholds.json"
    ),
) -> None:
    """Weighted log loss, per-label log loss and AUC, sensitivity/specificity, prior baseline."""
    from .evaluate import evaluate_files, print_report

    try:
        report = evaluate_files(predictions, labels, threshold, target_sensitivity)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        _fail(str(exc))
    if save_thresholds:
        from .runs import write_json

        write_json(
            save_thresholds,
            {
                "target_sensitivity": target_sensitivity,
                "source": str(predictions),
                "labels": report["operating_points"],
            },
        )
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        print_report(report, console)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-run"), "--out", "-o", help="working folder"),
    studies: int = typer.Option(200, help="synthetic studies"),
    epochs: int = typer.Option(4),
    workers: int = typer.Option(2, help="parallel processes for synth/index/prepare"),
) -> None:
    """synth -> index -> prepare -> train one fold on the CPU -> evaluate, with a result table."""
    from dataclasses import replace

    from .demo import DemoConfig, print_demo_table, run_demo

    cfg = replace(DemoConfig(), studies=studies, epochs=epochs, workers=workers)
    metrics = run_demo(out, cfg, log=console.print)
    print_demo_table(metrics, console)


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(
        ...,
        metavar="MODEL... INPUT",
        help="run dirs / checkpoints / one .onnx, then the input:"
        " Kaggle folder or .zip, index parquet, DICOM folder",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    tta: bool = typer.Option(False, "--tta", help="average with horizontal flips"),
    report: bool = typer.Option(False, "--report", help="HTML report per study (heat maps)"),
    batch_size: int = typer.Option(32),
    workers: int = typer.Option(1, help="decoding processes (overlap with the model)"),
    device: str = typer.Option("auto", help="auto | cuda | cpu (torch models)"),
) -> None:
    """Per-slice and per-study probabilities (+ Kaggle submission, + HTML reports)."""
    if len(inputs) < 2:
        _fail("give at least one MODEL and an INPUT")
    *models, data = inputs
    from .predict import predict as run_predict
    from .progress import progress_bar
    from .runners import load_runner

    try:
        runner = load_runner(models, device=device, tta=tta, batch_size=batch_size)
        with progress_bar(None, "predict") as advance:
            result = run_predict(
                runner,
                data,
                out,
                workers=workers,
                progress=advance,
                total=advance.set_total,
            )
    except (FileNotFoundError, ValueError, ImportError) as exc:
        _fail(str(exc))
    if result.slices.empty:
        _fail(f"nothing could be predicted; reasons in {result.files['errors']}")
    flagged = int(result.studies["any_flag"].sum())
    n_studies = len(result.studies)
    console.print(
        f"{len(result.slices)} slices of {n_studies} {'study' if n_studies == 1 else 'studies'} -> "
        f"{result.files['slices']}, {result.files['studies']} "
        f"({flagged} flagged for any hemorrhage)"
    )
    if result.submission is not None:
        console.print(
            f"Kaggle submission: {result.files['submission']} ({len(result.submission)} rows)"
        )
    if len(result.errors):
        err.print(
            f"skipped {len(result.errors)} file(s); reasons in {result.files['errors']}",
            style="yellow",
        )
    if report:
        from .report_run import write_reports

        paths = write_reports(runner, result, out / "report")
        console.print(f"{len(paths)} report(s) in {out / 'report'}")


@app.command()
def export(
    models: list[Path] = typer.Argument(
        ..., help="run dir(s) or checkpoint(s); every fold of a CV run is averaged into one model"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="the .onnx file to write"),
    opset: int = typer.Option(20, help="ONNX opset"),
) -> None:
    """Export to ONNX (dynamic batch; preprocessing settings in the metadata)."""
    from .export import export_onnx

    try:
        path = export_onnx(models, out, opset=opset)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


bench_app = typer.Typer(help="Benchmarks that print side-by-side ratios.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("infer")
def bench_infer(
    model: str = typer.Option("efficientnet_b0", help="timm model name"),
    size: int = typer.Option(256),
    batch_size: int = typer.Option(16),
    seconds: float = typer.Option(10.0, help="time budget per engine"),
    channels: int = typer.Option(3),
) -> None:
    """torch eager fp32 vs ONNX Runtime on the same model and inputs; prints `ratio`."""
    from .bench import bench_inference

    result = bench_inference(model, size, batch_size, seconds, channels, log=console.print)
    console.print(f"torch eager fp32: {result['torch']:.1f} img/s")
    console.print(f"onnxruntime:      {result['onnx']:.1f} img/s")
    console.print(f"max |p_onnx - p_torch| = {result['max_abs_diff']:.2e}")
    console.print(f"ratio {result['onnx'] / result['torch']:.2f}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
