"""``ichdet validate``: measure the model on a site's own studies against its own reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ichdet.cli.common import console, err, fail


def validate(
    pred: Annotated[Path, typer.Argument(help="a predict folder, a studies CSV, or DICOMs")],
    reference: Annotated[Path, typer.Argument(help="the truth: labels, CQ500 reads, RSNA form")],
    out: Annotated[Path, typer.Option("--out", "-o", help="validation.json, report.html")],
    model: Annotated[
        Path | None, typer.Option(help="run folder or .onnx (predicts DICOMs)")
    ] = None,
    bootstrap: Annotated[int, typer.Option(help="resamples of studies for the CIs")] = 2000,
    seed: Annotated[int, typer.Option(help="the bootstrap's seed")] = 0,
    thresholds: Annotated[str, typer.Option(help="model | site | FILE (JSON)")] = "model",
    target_sensitivity: Annotated[float, typer.Option(help="for site thresholds")] = 0.95,
    subgroups: Annotated[
        str, typer.Option(help="header columns")
    ] = "manufacturer,thickness,kernel",
    standard: Annotated[
        str, typer.Option("--reference", help="readers: majority | any-reader | R1 ...")
    ] = "majority",
    fit_site: Annotated[Path | None, typer.Option(help="write site thresholds here")] = None,
    calibrate: Annotated[bool, typer.Option(help="with --fit-site: a Platt map too")] = False,
) -> None:
    """Site validation: AUC with bootstrap CIs, the operating point with Wilson CIs,
    calibration, readers, subgroups, failures; report.html and validation.json in OUT."""
    from ichdet.evaluation.reference import ReferenceError, read_reference
    from ichdet.evaluation.validate import ValidateOptions, run_validation

    runner = _load(model) if model is not None else None
    studies, slices, manifest = _predictions(pred, runner, out)
    options = ValidateOptions(bootstrap, seed, target_sensitivity, _columns(subgroups))
    given, source = _thresholds(thresholds, runner, manifest)
    try:
        ref = read_reference(reference, standard, slices)
        found = run_validation(studies, ref, given, source, options)
    except (ReferenceError, ValueError, KeyError) as exc:
        fail(str(exc))
    _write(found, out, _about(found, runner, manifest, reference, studies), pred)
    print_validation(found.result)
    if fit_site is not None:
        digest = getattr(runner, "digest", "") or manifest.get("model_digest", "")
        if not digest:
            fail("--fit-site: the model's digest is unknown (give --model)")
        fallback = dict(runner.study_thresholds) if runner else manifest.get("study_thresholds")
        _fit_site(found, fit_site, digest, target_sensitivity, calibrate, fallback or {})


def _load(model: Path) -> Any:
    from ichdet.inference.runners import load_runner

    try:
        return load_runner([model])
    except (FileNotFoundError, ValueError, ImportError) as exc:
        fail(str(exc))


def _columns(text: str) -> tuple[str, ...]:
    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    allowed = {"manufacturer", "thickness", "kernel", "study_date", "accession"}
    if set(columns) - allowed:
        fail(f"--subgroups: {', '.join(sorted(set(columns) - allowed))} is none of {allowed}")
    return columns


def _predictions(pred: Path, runner: Any, out: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(studies, slices or None, manifest) of a predict folder, a studies CSV, or DICOMs that
    are predicted first (with --model) into OUT/predict."""
    import pandas as pd

    from ichdet.util.jsonio import read_json

    if pred.is_dir() and not (pred / "studies.csv").is_file():
        if runner is None:
            fail(f"{pred}: no studies.csv; to predict these files first, give --model")
        from ichdet.inference.predict import predict

        target = out / "predict"
        try:
            predict(runner, pred, target)
        except (FileNotFoundError, ValueError) as exc:
            fail(str(exc))
        pred = target
    folder = pred if pred.is_dir() else pred.parent
    table = pred / "studies.csv" if pred.is_dir() else pred
    if not table.is_file():
        fail(f"{table}: no such file")
    text = {"study_id": str, "patient_id": str, "accession": str, "study_date": str}
    studies = pd.read_csv(table, dtype=text, keep_default_na=False)
    slices_file = folder / "slices.csv"
    slices = pd.read_csv(slices_file, dtype=str) if slices_file.is_file() else None
    manifest_file = folder / "manifest.json"
    return studies, slices, read_json(manifest_file) if manifest_file.is_file() else {}


def _thresholds(choice: str, runner: Any, manifest: dict[str, Any]) -> tuple[dict, str]:
    """The operating thresholds and where they come from."""
    from ichdet.labels import LABELS
    from ichdet.util.jsonio import read_json

    if choice == "site":
        return {}, "site"
    if choice == "model":
        if runner is not None:
            return dict(runner.study_thresholds), "model"
        if manifest.get("study_thresholds"):
            return dict(manifest["study_thresholds"]), str(manifest.get("thresholds_from", "model"))
        fail("--thresholds model: give --model, or a predict folder with its manifest.json")
    try:
        data = read_json(choice)
        labels = data.get("labels", data)
        found = {k: float(v["threshold"] if isinstance(v, dict) else v) for k, v in labels.items()}
        return {k: found[k] for k in LABELS}, Path(choice).name
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        fail(f"--thresholds {choice}: not model, site or a thresholds JSON ({exc})")


def _about(found: Any, runner: Any, manifest: dict, reference: Path, studies: Any) -> dict:
    """The report's header: model, data, reference, software."""
    from ichdet import __version__

    rows = found.joined.studies
    dates = sorted(d for d in rows.get("study_date", []) if str(d).strip())
    makers = rows["manufacturer"].value_counts() if "manufacturer" in rows else {}
    warned = [str(w) for w in studies.get("warning", []) if str(w).strip()]
    synthetic = bool(getattr(runner, "synthetic_only", False)) or bool(warned)
    return {
        "model": ", ".join(getattr(runner, "names", None) or manifest.get("models", ["?"])),
        "digest": getattr(runner, "digest", "") or manifest.get("model_digest", "?"),
        "trained_on": "synthetic phantoms only" if synthetic else "as its run records",
        "version": __version__,
        "reference": reference.name,
        "dates": f"{dates[0]} to {dates[-1]}" if dates else "not in the headers",
        "sites": ", ".join(f"{k or 'unknown'} ({n})" for k, n in dict(makers).items()) or "?",
        "warning": warned[0] if warned else "",
    }


def _write(found: Any, out: Path, about: dict[str, Any], pred: Path) -> None:
    from ichdet.reports.validation_report import write_report
    from ichdet.util.jsonio import strict, write_json
    from ichdet.util.names import path_component

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "validation.json", strict({"about": about, **found.result}))
    folder = pred if pred.is_dir() else pred.parent
    links = {}
    for study in {f["study_id"] for f in found.result["failures"]}:
        page = folder / "report" / f"{path_component(study)}.html"
        if page.is_file():
            links[study] = str(page.resolve().as_uri())
    write_report(found, out / "report.html", about, links)
    console.print(f"{out / 'validation.json'}, {out / 'report.html'}")


def print_validation(result: dict[str, Any]) -> None:
    from rich.table import Table

    from ichdet.labels import LABELS
    from ichdet.reports.validation_report import ci, num

    s = result["studies"]
    console.print(
        f"joined on {result['joined_on']}: {s['joined']} studies ({s['assessed']} assessed); "
        f"{len(s['only_predicted'])} only predicted, {len(s['only_reference'])} only in the "
        f"reference; thresholds: {result['thresholds']['source']}"
    )
    table = Table("label", "n", "pos", "AUC (95% CI)", "sensitivity", "specificity", "PPV", "ECE")
    for label in LABELS:
        f = result["labels"][label]
        point = f["operating_point"]
        table.add_row(
            label,
            str(f["studies"]),
            str(f["positives"]),
            ci(f["auc"]),
            ci(point["sensitivity"], 2),
            ci(point["specificity"], 2),
            num(point["ppv"]["value"], 2),
            num(f["calibration"]["ece"]),
        )
    console.print(table)


def _fit_site(
    found: Any, path: Path, digest: str, target: float, calibrate: bool, fallback: dict
) -> None:
    from ichdet.evaluation.site import fit_site, write_site
    from ichdet.evaluation.validate import label_arrays
    from ichdet.labels import LABELS

    arrays = {}
    for label in LABELS:
        _, y, p = label_arrays(found.joined, found.assessed, label)
        arrays[label] = (y, p)
    site = fit_site(arrays, target, digest, calibrate, fallback)
    write_site(path, site)
    for label, f in site["labels"].items():
        if f["positives"] < 10:
            err.print(
                f"{label}: the threshold rests on {f['positives']} positive(s)", style="yellow"
            )
    console.print(f"site thresholds (sensitivity {target} on these studies) -> {path}")
