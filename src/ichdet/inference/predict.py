"""``ichdet predict``: models + images -> slices.csv, studies.csv, errors.csv (+ submission.csv).

INPUT is the Kaggle folder or .zip (its test split is predicted and a submission written with
exactly the sample submission's ids), an index parquet, or any folder of DICOM files. Slices are
decoded series by series in worker processes, ahead of the model, so decoding overlaps compute.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ichdet.data.index import build_index, order_series
from ichdet.dicom.sources import find_member, open_text
from ichdet.evaluation.metrics import from_long, to_long
from ichdet.evaluation.site import apply_site
from ichdet.inference.decode import Decoded, decode_ahead, frame_rows, series_chunks
from ichdet.inference.runners import Runner
from ichdet.inference.seg_runner import Segmenter
from ichdet.inference.segment import clear_masks, segment_outputs, with_volumes
from ichdet.inference.series import SliceOutputs
from ichdet.inference.study_outputs import (
    series_table,
    study_headers,
    study_table,
    with_status,
)
from ichdet.labels import LABELS
from ichdet.selection.choose import ReadPlan, SelectionOptions, plan_reads
from ichdet.util.jsonio import write_json
from ichdet.util.tables import write_frame

if TYPE_CHECKING:
    from ichdet.inference.ray_scores import RayOptions, RayRun

SAMPLE_SUBMISSIONS = ("stage_2_sample_submission.csv", "stage_1_sample_submission.csv")


@dataclass
class PredictResult:
    index: pd.DataFrame  # the rows given to the model (ids, sources, kinds; slabs: their slices)
    slices: pd.DataFrame
    studies: pd.DataFrame
    errors: pd.DataFrame
    submission: pd.DataFrame | None
    files: dict[str, Path]
    missing: int = 0  # sample-submission images that were not predicted
    inputs: pd.DataFrame | None = None  # every image found (all series), read or not
    series: pd.DataFrame | None = None  # series.csv: every series, read or not, and why
    ray: RayRun | None = None  # with --engine ray: series scored now and resumed


@dataclass
class Input:
    index: pd.DataFrame  #: one row per image
    errors: pd.DataFrame  #: files that could not be indexed, with the reason
    sample: str | None  #: the Kaggle sample submission, when the input is the Kaggle set
    others: list[dict]  #: DICOM objects that are no CT slice (dose reports, captures)


def load_input(
    data: str | os.PathLike, workers: int = 1, progress: Callable[[int], None] | None = None
) -> Input:
    """The images of ``data`` (an index parquet, a Kaggle folder or zip: its test split, or
    any folder of DICOM files)."""
    path = Path(data)
    if path.suffix == ".parquet":
        index = order_series(pd.read_parquet(path))
        return Input(index, pd.DataFrame(columns=["source", "reason"]), None, [])
    sample = next((s for name in SAMPLE_SUBMISSIONS if (s := find_member(path, name))), None)
    index, errors, report = build_index(path, workers=workers, progress=progress)
    if sample is not None:
        index = index[index["split"] == "test"]
    return Input(index.reset_index(drop=True), errors, sample, report.get("other_objects", []))


@dataclass
class Scores:
    """What ``score_series`` found: per slice (and per series, with a series stage)."""

    slices: pd.DataFrame  # image_id + six labels (+ cnn_<label> with a series stage)
    errors: list[tuple[str, str]]
    series: pd.DataFrame | None = None  # study/series ids + six study-head probabilities


class _SeriesBuffer:
    """Collects a series' CNN outputs chunk by chunk; runs the series stage once it is whole."""

    def __init__(self, runner: Runner, z: dict[str, float]):
        self.runner, self.z = runner, z
        self.key: tuple | None = None
        self.ids: list[str] = []
        self.parts: list[SliceOutputs] = []
        self.slices: list[pd.DataFrame] = []
        self.series: list[tuple] = []

    def add(self, key: tuple, ids: list[str], outputs: SliceOutputs) -> None:
        if key != self.key:
            self.flush()
            self.key = key
        self.ids += ids
        self.parts.append(outputs)

    def flush(self) -> None:
        if not self.ids or self.runner.series is None or self.key is None:
            return
        features = np.concatenate([p.features for p in self.parts], axis=1)
        logits = np.concatenate([p.logits for p in self.parts], axis=1)
        cnn = np.concatenate([p.probs for p in self.parts])
        z = np.array([self.z[i] for i in self.ids], dtype=np.float32)
        slice_p, study_p = self.runner.series(features, logits, z)
        frame = pd.DataFrame(slice_p, columns=list(LABELS))
        frame[[f"cnn_{n}" for n in LABELS]] = cnn
        frame.insert(0, "image_id", self.ids)
        self.slices.append(frame)
        self.series.append((*self.key, *study_p.tolist()))
        self.ids, self.parts = [], []


def score_series(
    runner: Runner,
    index: pd.DataFrame,
    workers: int,
    progress: Callable[[int], None] | None = None,
    known: dict[str, np.ndarray] | None = None,
) -> Scores:
    """Probabilities for every row of ``index``, series by series (decoded ahead in
    ``workers`` processes, in bounded chunks), through the series stage when the run has one.
    ``known``: HU images decoded already (by the selection's image check), by source."""
    spec = runner.spec
    chunks, keys = [], []
    for key, g in index.groupby(["study_id", "series_id"], sort=False):
        rows = frame_rows(g)
        for chunk in series_chunks(rows, spec.context, known=known):
            chunks.append(chunk)
            keys.append(key)
    depth = 2 * max(1, workers)
    decoded = decode_ahead(chunks, spec.settings, spec.context, workers, depth)
    z = dict(zip(index["image_id"], index["z"], strict=True))
    return score_decoded(runner, zip(keys, decoded, strict=True), z, progress)


def score_decoded(
    runner: Runner,
    decoded: Iterable[tuple[tuple, Decoded]],
    z: dict[str, float],
    progress: Callable[[int], None] | None = None,
) -> Scores:
    """The model over decoded chunks, each with its (study, series) key, in series order:
    the one scoring path of both engines (the Ray engine's actors call it per series)."""
    ids: list[str] = []
    probs: list[np.ndarray] = []
    errors: list[tuple[str, str]] = []
    buffer = _SeriesBuffer(runner, z)
    for key, (chunk_ids, volume, errs) in decoded:
        errors += errs
        if volume is not None and runner.series is not None:
            buffer.add(key, chunk_ids, runner.embed(volume))
        elif volume is not None:
            probs.append(runner(volume))
            ids += chunk_ids
        if progress:
            progress(len(chunk_ids) + len(errs))
    buffer.flush()
    if runner.series is not None:
        return _series_scores(buffer, errors)
    table = pd.DataFrame(np.concatenate(probs) if probs else np.zeros((0, 6)), columns=LABELS)
    table.insert(0, "image_id", ids)
    return Scores(table, errors)


def _series_scores(buffer: _SeriesBuffer, errors: list[tuple[str, str]]) -> Scores:
    columns = ["image_id", *LABELS, *(f"cnn_{n}" for n in LABELS)]
    slices = pd.concat(buffer.slices) if buffer.slices else pd.DataFrame(columns=columns)
    series = pd.DataFrame(buffer.series, columns=["study_id", "series_id", *LABELS])
    return Scores(slices.reset_index(drop=True), errors, series)


def _studies(
    runner: Runner, scores: Scores, slices: pd.DataFrame, plan: ReadPlan, inputs: pd.DataFrame
) -> pd.DataFrame:
    """studies.csv: the study table (a study of several series read: its highest series)
    with the site's calibration and thresholds (``ichdet validate --fit-site``) when the
    runner has them, the provenance warning and the header columns (before ``series_read``
    and ``notes``)."""
    study_probs = None
    if scores.series is not None:
        study_probs = scores.series.groupby("study_id", sort=False)[list(LABELS)].max()
    studies = with_status(study_table(slices, runner.study_thresholds, study_probs), plan)
    read = plan.rows
    site = getattr(runner, "site", None)
    if site is not None:
        studies = apply_site(studies, site)
    studies.insert(
        len(studies.columns) - 2,
        "warning",
        provenance_warnings(runner, inputs, studies["study_id"]),
    )
    headers = study_headers(studies, inputs, read)
    return pd.concat([studies.iloc[:, :-2], headers, studies.iloc[:, -2:]], axis=1)


#: What predict writes; stale copies are removed first, the manifest is written last.
OUTPUTS = ("slices", "studies", "series", "errors", "submission")
MANIFEST = "manifest.json"


def write_outputs(
    out: Path, frames: dict[str, pd.DataFrame], runner: Runner, ray: RayRun | None = None
) -> dict[str, Path]:
    """The CSVs (formula-safe), then ``manifest.json`` naming them: a crash leaves no stale
    file of an earlier run beside new ones, and a folder without a manifest is incomplete."""
    for name in (*[f"{k}.csv" for k in OUTPUTS], MANIFEST):
        (out / name).unlink(missing_ok=True)
    files = {key: write_frame(out / f"{key}.csv", frame) for key, frame in frames.items()}
    manifest = {
        "files": {key: path.name for key, path in files.items()},
        "rows": {key: len(frame) for key, frame in frames.items()},
        "models": list(runner.names),  # short names: no local absolute paths
        "model_digest": getattr(runner, "digest", ""),
        "study_thresholds": {k: float(v) for k, v in runner.study_thresholds.items()},
        "thresholds_from": (getattr(runner, "site", None) or {}).get("source", "model"),
    }
    if any((out / "masks").glob("*.npz")):
        manifest["masks"] = "masks"
    if ray is not None:
        manifest["engine"] = {"name": "ray", "series_scored": ray.scored}
        manifest["engine"]["series_resumed"] = ray.resumed
    write_json(out / MANIFEST, manifest)
    return files


def predict(
    runner: Runner,
    data: str | os.PathLike,
    out: str | os.PathLike,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
    selection: SelectionOptions | None = None,
    segmenter: Segmenter | None = None,
    ray: RayOptions | None = None,
) -> PredictResult:
    """Run ``runner`` (see ichdet.inference.runners) over ``data``; write the CSVs into ``out``.

    Each study's series are classified and the ones to read chosen first (``selection``; the
    model's training spacing by default; a Kaggle test set is read whole); a ``segmenter`` adds
    volumes and ``out/masks`` (ichdet.inference.segment); ``ray`` scores the series on a
    Ray cluster (ichdet.inference.ray_scores; resumable from ``out/parts``). ``progress(n)``
    is called as files are done; ``total(n)`` once the count of images to read is known.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    given = load_input(data, workers=workers)
    plan = plan_reads(given.index, given.others, _options(selection, runner, given))
    if total:
        total(len(plan.rows))
    scores, ray_run = _scores(runner, plan, out, workers, progress, ray)
    slices = _slice_table(scores, plan.rows)
    studies = _studies(runner, scores, slices, plan, given.index)
    error_rows = [*given.errors.itertuples(index=False, name=None), *scores.errors]
    segmenter = segmenter if segmenter is not None else getattr(runner, "segmenter", None)
    studies, error_rows = _measured(segmenter, plan, out, workers, studies, error_rows, slices)
    frames = {
        "slices": slices,
        "studies": studies,
        "series": series_table(plan, slices, scores.series),
    }
    submission, missing = None, 0
    if given.sample is not None:
        submission, unpredicted = kaggle_submission(slices, given.sample)
        missing = len(unpredicted)
        error_rows += [(f"{i} (sample submission)", NOT_PREDICTED) for i in unpredicted]
        frames["submission"] = submission
    errors_df = pd.DataFrame(error_rows, columns=["source", "reason"])
    files = write_outputs(out, {**frames, "errors": errors_df}, runner, ray_run)
    series = frames["series"]
    result = PredictResult(plan.rows, slices, studies, errors_df, submission, files, missing)
    result.inputs, result.series, result.ray = given.index, series, ray_run
    return result


def _scores(
    runner: Runner,
    plan: ReadPlan,
    out: Path,
    workers: int,
    progress: Callable[[int], None] | None,
    ray: RayOptions | None,
) -> tuple[Scores, RayRun | None]:
    """The read plan scored here (``workers`` decoding processes) or on Ray."""
    if ray is None:
        return score_series(runner, plan.rows, workers, progress, plan.decoded), None
    from ichdet.inference.ray_scores import ray_score_series

    return ray_score_series(runner, ray, plan.rows, out, progress)


def _measured(
    segmenter: Segmenter | None,
    plan: ReadPlan,
    out: Path,
    workers: int,
    studies: pd.DataFrame,
    errors: list,
    slices: pd.DataFrame,
) -> tuple[pd.DataFrame, list]:
    """Studies with their volumes, and the errors with the segmenter's (with a segmenter,
    gated by the slice probabilities of any hemorrhage); the masks of an earlier run in
    ``out`` are removed either way."""
    clear_masks(out)
    if segmenter is None:
        return studies, errors
    detected = dict(zip(slices["image_id"].astype(str), slices["any"], strict=True))
    volumes, seg_errors = segment_outputs(segmenter, plan.rows, out, workers, detected)
    return with_volumes(studies, volumes), errors + seg_errors


def _options(selection: SelectionOptions | None, runner: Runner, given: Input) -> SelectionOptions:
    """The selection options of a run: the model's training spacing unless given; a Kaggle
    test set read whole (every test image needs its prediction)."""
    options = selection or SelectionOptions()
    options = replace(options, training_mm=options.training_mm or runner.slice_spacing)
    return replace(options, series="off") if given.sample is not None else options


def _slice_table(scores: Scores, rows: pd.DataFrame) -> pd.DataFrame:
    """slices.csv: ids, position, probabilities (+ the CNN's with a series stage); a slab
    names its middle slice and lists its slices (``slab_ids``)."""
    slab = ["slab_slices", "slab_ids"] if rows.get("slab_slices", pd.Series()).gt(1).any() else []
    meta = rows.set_index("image_id")[["study_id", "series_id", "z", *slab]]
    extra = [c for c in scores.slices.columns if c.startswith("cnn_")]
    table = scores.slices.astype({"image_id": str})
    return table.join(meta, on="image_id")[
        ["image_id", "study_id", "series_id", "z", *LABELS, *extra, *slab]
    ]


SYNTHETIC_WARNING = (
    "model trained only on synthetic phantoms (ichdet synth), applied to real images: "
    "its probabilities mean nothing here"
)


def provenance_warnings(runner: Runner, index: pd.DataFrame, study_ids: pd.Series) -> list[str]:
    """Per study: SYNTHETIC_WARNING when a phantom-trained model met real images, else ""."""
    if not runner.synthetic_only or study_ids.empty:
        return [""] * len(study_ids)
    synthetic = index["synthetic"] if "synthetic" in index else pd.Series(False, index.index)
    all_synthetic = synthetic.astype(bool).groupby(index["study_id"]).all()
    return ["" if all_synthetic.get(s, False) else SYNTHETIC_WARNING for s in study_ids]


NOT_PREDICTED = "not predicted (missing or unreadable); filled with the mean prediction"


def kaggle_submission(slices: pd.DataFrame, sample_source: str) -> tuple[pd.DataFrame, list[str]]:
    """Predictions in the sample submission's ids and order, and the ids that were not
    predicted (missing or unreadable images; filled with the test set's mean prediction)."""
    sample = pd.read_csv(io.StringIO(open_text(sample_source)))
    wide = from_long(to_long(slices["image_id"].tolist(), slices[list(LABELS)].to_numpy()))
    fallback = wide.mean() if len(wide) else pd.Series(0.5, index=list(LABELS))
    wanted = from_long(sample.assign(Label=0.0)).index
    unpredicted = [str(i) for i in wanted.difference(wide.index)]
    filled = wide.reindex(wanted).fillna(fallback)
    values = to_long(filled.index.tolist(), filled.to_numpy()).set_index("ID")["Label"]
    frame = pd.DataFrame({"ID": sample["ID"], "Label": values.loc[sample["ID"]].to_numpy()})
    return frame, unpredicted
