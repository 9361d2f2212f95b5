"""``ichdet predict``, ``export`` and ``bench infer``: trained models at work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ichdet.cli.common import AddressOpt, EngineOpt, console, err, fail

if TYPE_CHECKING:
    from ichdet.inference.predict import PredictResult
    from ichdet.inference.ray_scores import RayOptions
    from ichdet.inference.runners import Runner
    from ichdet.inference.seg_runner import Segmenter


SEGMENTER_HELP = (
    "a segmenter run, checkpoint or .onnx (ichdet train --task segment): volumes in "
    "studies.csv, masks in OUT/masks, overlays, DICOM SEG"
)


Inputs = Annotated[
    list[str],
    typer.Argument(
        metavar="MODEL... INPUT",
        help="run dirs / checkpoints / one .onnx, then the input: Kaggle folder or .zip, "
        "index parquet, DICOM folder, or dicomweb+https://HOST/dicom-web",
    ),
]
DicomOut = Annotated[
    Path | None,
    typer.Option(help="also write a DICOM SR and Secondary Capture key slices per study here"),
]
SeriesMode = Annotated[
    str,
    typer.Option(
        help="best: one series per study, chosen (README: how a series is chosen) | "
        "all: every series that may be read | off: every image series, unchosen"
    ),
]
Slab = Annotated[
    str,
    typer.Option(help="thin series as slabs: off | auto (the model's training spacing) | MM"),
]
ImageCheck = Annotated[
    bool,
    typer.Option(help="look at 3 slices of a series before reading it (head? soft kernel?)"),
]
SegGate = Annotated[
    float,
    typer.Option(help="keep a slice's masks where the detector's p(any) reaches this (0: all)"),
]
Replicas = Annotated[
    int, typer.Option(help="with --engine ray: model replicas (0: as many as the cluster holds)")
]
GpusPerReplica = Annotated[
    float, typer.Option("--gpus-per-replica", help="with --engine ray: GPUs per model replica")
]
Studies = Annotated[list[str], typer.Option("--study", help="DICOMweb: a StudyInstanceUID")]
Query = Annotated[
    str | None,
    typer.Option(help="DICOMweb: QIDO-RS filters, e.g. 'StudyDate=20250101-20250131'"),
]
Stow = Annotated[bool, typer.Option("--stow", help="DICOMweb: store the SR and SCs back")]
TokenFile = Annotated[
    Path | None,
    typer.Option(help="DICOMweb bearer token file (else $ICHDET_DICOMWEB_TOKEN, if set)"),
]


def predict(
    inputs: Inputs,
    out: Path = typer.Option(..., "--out", "-o", help="output folder"),
    tta: bool = typer.Option(False, "--tta", help="average with horizontal flips"),
    report: bool = typer.Option(False, "--report", help="HTML report per study (heat maps)"),
    dicom_out: DicomOut = None,
    batch_size: int = typer.Option(32),
    workers: int = typer.Option(1, help="decoding processes (overlap with the model)"),
    device: str = typer.Option("auto", help="auto | cuda | cpu (torch models)"),
    series: SeriesMode = "best",
    slab: Slab = "auto",
    image_check: ImageCheck = True,
    site: Path | None = typer.Option(None, help="site thresholds (ichdet validate --fit-site)"),
    segmenter: list[Path] = typer.Option([], help=SEGMENTER_HELP),
    seg_gate: SegGate = 0.1,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    replicas: Replicas = 0,
    gpus: GpusPerReplica = 0.0,
    study: Studies = [],  # noqa: B006 - typer's list option
    query: Query = None,
    stow: Stow = False,
    token_file: TokenFile = None,
) -> None:
    """Per-slice and per-study probabilities (+ volumes, Kaggle submission, HTML reports)."""
    if len(inputs) < 2:
        fail("give at least one MODEL and an INPUT")
    *models, data = inputs
    from ichdet.dicomweb.client import is_dicomweb
    from ichdet.inference.predict import predict as run_predict
    from ichdet.inference.runners import load_runner
    from ichdet.selection.choose import SelectionOptions
    from ichdet.selection.slabs import parse_slab
    from ichdet.util.progress import progress_bar

    try:
        remote = Remote(data, token_file, study, query, stow).checked(is_dicomweb(data))
        selection = SelectionOptions(series=series, slab=parse_slab(slab), image_check=image_check)
        runner = with_site(load_runner(models, device=device, tta=tta, batch_size=batch_size), site)
        ray = _ray(engine, address, models, (device, tta, batch_size, workers), replicas, gpus)
        with progress_bar(None, "predict") as advance:
            args: dict[str, Any] = dict(workers=workers, progress=advance)
            args["total"] = advance.set_total
            args |= dict(selection=selection, segmenter=_segmenter(segmenter, device, seg_gate))
            if remote is not None:
                result = _predict_dicomweb(runner, remote, out, ray, args)
            else:
                result = run_predict(runner, data, out, ray=ray, **args)
    except (FileNotFoundError, ValueError, ImportError, OSError) as exc:
        fail(str(exc))
    _summarise(result)
    if report:
        _write_reports(runner, result, out)
    if dicom_out is not None:
        _write_dicom(runner, result, dicom_out)


@dataclass(frozen=True)
class Remote:
    url: str
    token_file: Path | None
    studies: list[str]
    query: str | None
    stow: bool

    def checked(self, dicomweb: bool) -> Remote | None:
        """Itself for a DICOMweb input; None for another input, which takes none of the
        DICOMweb options (ValueError)."""
        if dicomweb:
            return self
        if self.studies or self.query or self.stow or self.token_file:
            raise ValueError("--study, --query, --stow and --token-file need a dicomweb+ input")
        return None


def _predict_dicomweb(
    runner: Runner, remote: Remote, out: Path, ray: RayOptions | None, args: dict
) -> PredictResult:
    """predict from a DICOMweb server (ichdet.dicomweb.run); prints what was fetched and
    stored, and fails when nothing could be fetched."""
    from ichdet.dicomweb.client import parse_server
    from ichdet.dicomweb.run import Request, predict_dicomweb
    from ichdet.util.ray_engine import Engine, mapper

    server = parse_server(remote.url, remote.token_file)
    request = Request(tuple(remote.studies), remote.query)
    fetch = mapper(ray.engine if ray else Engine())
    run = predict_dicomweb(runner, server, request, out, remote.stow, fetch, ray=ray, **args)
    series = sum(len(p.series) for p in run.plans)
    console.print(f"DICOMweb: {len(run.plans)} study(ies), {series} series fetched")
    if run.failed:
        err.print(
            f"{len(run.failed)} DICOMweb problem(s); reasons in {out / 'dicomweb_errors.csv'}",
            style="yellow",
        )
    if run.result is None:
        fail("nothing could be fetched; see dicomweb_studies.csv and dicomweb_errors.csv")
    if remote.stow:
        console.print(f"STOW-RS: {run.stored} result instance(s) stored back")
    return run.result


def _ray(
    engine: str,
    address: str | None,
    models: list[str],
    run: tuple[str, bool, int, int],
    replicas: int,
    gpus: float,
) -> RayOptions | None:
    """The Ray settings of ``predict --engine ray`` (None for the local engine)."""
    from ichdet.util.ray_engine import Engine

    chosen = Engine(engine, address)
    if not chosen.is_ray:
        return None
    from ichdet.inference.ray_scores import RayOptions

    device, tta, batch_size, workers = run
    paths = tuple(str(Path(m).resolve()) for m in models)  # the workers' folder is not ours
    return RayOptions(chosen, paths, device, tta, batch_size, replicas, gpus, workers=workers)


def _segmenter(paths: list[Path], device: str, gate: float) -> Segmenter | None:
    if not paths:
        return None
    from ichdet.inference.seg_runner import load_segmenter

    return load_segmenter(paths, device=device, gate=gate)


def with_site(runner: Runner, site: Path | None) -> Runner:
    """``runner`` flagging with the site file (ValueError when it is another model's)."""
    if site is not None:
        from ichdet.evaluation.site import use_site

        found = use_site(runner, site)
        console.print(f"thresholds: {found['source']}")
    return runner


def _summarise(result: PredictResult) -> None:
    from ichdet.inference.study_outputs import flagged, is_assessed

    assessed = is_assessed(result.studies)
    if result.slices.empty and assessed.all():
        fail(f"nothing could be predicted; reasons in {result.files['errors']}")
    n_studies = len(result.studies)
    if result.ray is not None:
        console.print(
            f"Ray: {result.ray.scored} series scored, {result.ray.resumed} finished before (parts/)"
        )
    console.print(
        f"{len(result.slices)} slices of {n_studies} {'study' if n_studies == 1 else 'studies'} -> "
        f"{result.files['slices']}, {result.files['studies']}, {result.files['series']} "
        f"({int(flagged(result.studies).sum())} flagged for any hemorrhage)"
    )
    if (~assessed).any():  # counts and reasons only: no UIDs on the console
        reasons = result.studies.loc[~assessed, "reason"].value_counts()
        err.print(
            f"{int((~assessed).sum())} study(ies) NOT ASSESSABLE (no probability given): "
            + "; ".join(f"{n} x {r}" for r, n in reasons.items())
            + " (columns status, reason of studies.csv; series.csv says why per series)",
            style="bold yellow",
        )
    if "volume_ml_any" in result.studies:
        measured = result.studies["volume_ml_any"].notna()
        console.print(
            f"volumes of {int(measured.sum())} study(ies) in studies.csv (volume_ml_*, "
            f"thickness_mm_*); {int((result.studies['volume_ml_any'] > 0).sum())} with blood "
            "segmented; masks in masks/"
        )
    if result.submission is not None:
        console.print(
            f"Kaggle submission: {result.files['submission']} ({len(result.submission)} rows)"
        )
    warned = int((result.studies["warning"] != "").sum())
    if warned:
        from ichdet.inference.predict import SYNTHETIC_WARNING

        err.print(
            f"WARNING: {warned} {'study' if warned == 1 else 'studies'}: {SYNTHETIC_WARNING} "
            "(column 'warning' of studies.csv)",
            style="bold red",
        )
    if result.missing:
        err.print(
            f"{result.missing} image(s) of the sample submission were not predicted (missing or "
            "unreadable); filled with the mean prediction and listed in "
            f"{result.files['errors']}",
            style="yellow",
        )
    if len(result.errors):
        err.print(
            f"skipped {len(result.errors)} file(s); reasons in {result.files['errors']}",
            style="yellow",
        )


def _write_reports(runner: Runner, result: PredictResult, out: Path) -> None:
    from ichdet.reports.study_reports import write_reports
    from ichdet.util.tables import write_csv

    paths, failed = write_reports(runner, result, out / "report")
    console.print(f"{len(paths)} report(s) in {out / 'report'}")
    if failed:
        errors = write_csv(out / "report" / "errors.csv", ["study_id", "reason"], failed)
        err.print(f"{len(failed)} report(s) failed; reasons in {errors}", style="yellow")


def _write_dicom(runner: Runner, result: PredictResult, out: Path) -> None:
    from ichdet import __version__
    from ichdet.reports.dicom_results import write_study_results
    from ichdet.util.tables import write_csv

    paths, failed = write_study_results(runner, result, out, __version__)
    console.print(f"{len(paths)} DICOM result object(s) in {out}")
    if failed:
        errors = write_csv(out / "errors.csv", ["study_id", "reason"], failed)
        err.print(f"{len(failed)} study result(s) failed; reasons in {errors}", style="yellow")


def export(
    models: list[Path] = typer.Argument(
        ..., help="run dir(s) or checkpoint(s); every fold of a CV run is averaged into one model"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="the .onnx file to write"),
    opset: int = typer.Option(20, help="ONNX opset"),
) -> None:
    """Export to ONNX (dynamic batch; preprocessing settings in the metadata)."""
    from ichdet.inference.export import export_onnx

    try:
        path = export_onnx(models, out, opset=opset)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


def bench_infer(
    model: str = typer.Option("efficientnet_b0", help="timm model name"),
    size: int = typer.Option(256),
    batch_size: int = typer.Option(16),
    seconds: float = typer.Option(10.0, help="time budget per engine"),
    channels: int = typer.Option(3),
) -> None:
    """torch eager fp32 vs ONNX Runtime on the same model and inputs; prints `ratio`."""
    from ichdet.inference.bench import bench_inference

    result = bench_inference(model, size, batch_size, seconds, channels, log=console.print)
    console.print(f"torch eager fp32: {result['torch']:.1f} img/s")
    console.print(f"onnxruntime:      {result['onnx']:.1f} img/s")
    console.print(f"max |p_onnx - p_torch| = {result['max_abs_diff']:.2e}")
    console.print(f"ratio {result['onnx'] / result['torch']:.2f}")
