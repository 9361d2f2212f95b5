"""``ichdet predict``: models + images -> slices.csv, studies.csv, errors.csv (+ submission.csv).

INPUT is the Kaggle folder or .zip (its test split is predicted and a submission written with
exactly the sample submission's ids), an index parquet, or any folder of DICOM files. Slices are
decoded series by series in worker processes, ahead of the model, so decoding overlaps compute.
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ichdet.data.cache import CacheSettings
from ichdet.data.index import build_index, order_series
from ichdet.data.prepare import dicom_stack, image_stack
from ichdet.dicom.read import DicomError
from ichdet.dicom.sources import find_member, open_text
from ichdet.evaluation.metrics import from_long, to_long
from ichdet.inference.runners import Runner
from ichdet.labels import LABELS
from ichdet.util.atomic import atomic_path

SAMPLE_SUBMISSIONS = ("stage_2_sample_submission.csv", "stage_1_sample_submission.csv")


@dataclass
class PredictResult:
    index: pd.DataFrame  # the rows that were given to the model (ids, sources, kinds)
    slices: pd.DataFrame
    studies: pd.DataFrame
    errors: pd.DataFrame
    submission: pd.DataFrame | None
    files: dict[str, Path]


def load_input(
    data: str | os.PathLike, workers: int = 1, progress: Callable[[int], None] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    """(index rows to predict, errors, sample submission source or None)."""
    path = Path(data)
    if path.suffix == ".parquet":
        return order_series(pd.read_parquet(path)), pd.DataFrame(columns=["source", "reason"]), None
    sample = next((s for name in SAMPLE_SUBMISSIONS if (s := find_member(path, name))), None)
    index, errors, _ = build_index(path, workers=workers, progress=progress)
    if sample is not None:
        index = index[index["split"] == "test"]
    return index.reset_index(drop=True), errors, sample


def series_inputs(
    rows: list[tuple[str, str, str]], settings: CacheSettings, context: int
) -> tuple[list[str], np.ndarray | None, list[tuple[str, str]]]:
    """Decode one series (rows in z order) -> (image ids, model inputs, errors)."""
    stacks, ids, errors = [], [], []
    for image_id, source, kind in rows:
        try:
            make = image_stack if kind == "image" else dicom_stack
            stacks.append(make(source, settings))
            ids.append(image_id)
        except DicomError as exc:
            errors.append((source, exc.reason))
        except (ValueError, OSError) as exc:
            errors.append((source, str(exc)))
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a batch
            errors.append((source, f"{type(exc).__name__}: {exc}"))
    if not stacks:
        return [], None, errors
    volume = np.stack(stacks)  # N x C x H x W, in slice order
    if context:
        n = len(volume)
        neighbours = [
            volume[np.clip(np.arange(n) + o, 0, n - 1)] for o in range(-context, context + 1)
        ]
        volume = np.concatenate(neighbours, axis=1)
    return ids, volume, errors


def _decode_ahead(
    pool: Executor | None,
    series: list[list[tuple[str, str, str]]],
    settings: CacheSettings,
    context: int,
    depth: int,
) -> Iterator:
    """Yield decoded series in order, keeping up to ``depth`` decodes running ahead."""
    if pool is None:
        for rows in series:
            yield series_inputs(rows, settings, context)
        return
    queue: deque[Future] = deque()
    pending = iter(series)
    for rows in pending:
        queue.append(pool.submit(series_inputs, rows, settings, context))
        if len(queue) >= depth:
            break
    while queue:
        result = queue.popleft().result()
        for rows in pending:
            queue.append(pool.submit(series_inputs, rows, settings, context))
            break
        yield result


def study_table(slices: pd.DataFrame, thresholds: dict[str, float]) -> pd.DataFrame:
    """One row per study: max slice probability per label, the slice holding it, flags."""
    rows = []
    for study_id, group in slices.groupby("study_id", sort=False):
        row: dict = {"study_id": study_id, "slices": len(group)}
        for name in LABELS:
            top = group[name].idxmax()
            row[name] = float(group.at[top, name])
            row[f"{name}_slice"] = group.at[top, "image_id"]
            row[f"{name}_flag"] = bool(row[name] >= thresholds.get(name, 0.5))
        rows.append(row)
    return pd.DataFrame(rows)


def score_series(
    runner: Runner,
    index: pd.DataFrame,
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Probabilities for every row of ``index``, series by series (decoded ahead in
    ``workers`` processes); returns (image_id + six labels, errors)."""
    series = [
        list(g[["image_id", "source", "kind"]].itertuples(index=False, name=None))
        for _, g in index.groupby(["study_id", "series_id"], sort=False)
    ]
    spec = runner.spec
    ids: list[str] = []
    probs: list[np.ndarray] = []
    errors: list[tuple[str, str]] = []
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for series_ids, volume, errs in _decode_ahead(
            pool, series, spec.settings, spec.context, depth=2 * max(1, workers)
        ):
            errors += errs
            if volume is not None:
                probs.append(runner(volume))
                ids += series_ids
            if progress:
                progress(len(series_ids) + len(errs))
    finally:
        if pool is not None:
            pool.shutdown()
    table = pd.DataFrame(np.concatenate(probs) if probs else np.zeros((0, 6)), columns=LABELS)
    table.insert(0, "image_id", ids)
    return table, errors


def predict(
    runner: Runner,
    data: str | os.PathLike,
    out: str | os.PathLike,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> PredictResult:
    """Run ``runner`` (see ichdet.inference.runners) over ``data``; write the CSVs into ``out``.

    ``progress(n)`` is called as files are done; ``total(n)`` once the file count is known.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index, errors, sample = load_input(data, workers=workers)
    if total:
        total(len(index))
    if "kind" not in index:
        index = index.assign(kind="dicom")
    table, errs = score_series(runner, index, workers, progress)
    meta = index.set_index("image_id")[["study_id", "series_id", "z"]]
    slices = table.join(meta, on="image_id")[["image_id", "study_id", "series_id", "z", *LABELS]]
    studies = study_table(slices, runner.thresholds)
    errors_df = pd.DataFrame(
        [*errors.itertuples(index=False, name=None), *errs], columns=["source", "reason"]
    )
    outputs = {"slices": slices, "studies": studies, "errors": errors_df}
    submission = kaggle_submission(slices, sample) if sample is not None else None
    if submission is not None:
        outputs["submission"] = submission
    files = {key: out / f"{key}.csv" for key in outputs}
    for key, frame in outputs.items():
        with atomic_path(files[key]) as tmp:
            frame.to_csv(tmp, index=False)
    return PredictResult(index, slices, studies, errors_df, submission, files)


def kaggle_submission(slices: pd.DataFrame, sample_source: str) -> pd.DataFrame:
    """Predictions in the sample submission's ids and order; images that could not be read
    get the mean prediction of the test set (and are listed in errors.csv)."""
    sample = pd.read_csv(io.StringIO(open_text(sample_source)))
    wide = from_long(to_long(slices["image_id"].tolist(), slices[list(LABELS)].to_numpy()))
    fallback = wide.mean() if len(wide) else pd.Series(0.5, index=list(LABELS))
    wanted = from_long(sample.assign(Label=0.0)).index
    filled = wide.reindex(wanted).fillna(fallback)
    values = to_long(filled.index.tolist(), filled.to_numpy()).set_index("ID")["Label"]
    return pd.DataFrame({"ID": sample["ID"], "Label": values.loc[sample["ID"]].to_numpy()})
