"""``predict --engine ray``: the series of a read plan scored on a Ray cluster (Ray Data).

Each series is one row of a Ray Dataset: it is decoded (HU, windows, the same chunks as the
local engine; by CPU tasks feeding GPU replicas, or by the CPU replica itself), an actor pool
that keeps the model loaded scores it (CNN, then the series stage; ``num_gpus`` per replica
where the cluster has GPUs), and the driver writes what comes back as
``OUT/parts/<SeriesInstanceUID>.parquet``, atomically, once. The parts are then read back in
the plan's order into the same :class:`~ichdet.inference.predict.Scores` the local engine
gives, so every file predict writes after that is made by the same code.

Resumable and idempotent: a part records the digest of its series' rows and the run key (the
model, its series stage and its settings); a rerun skips the series whose part matches, a part
of another model or another version of the series is recomputed; a task whose worker dies is
retried by Ray (decode tasks) or given to a restarted actor (scoring); a series is written
only once per run.
"""

from __future__ import annotations

import io
import json
import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ichdet.inference.decode import chunk_inputs, display_source, frame_rows, series_chunks
from ichdet.labels import LABELS
from ichdet.util.atomic import write_bytes
from ichdet.util.jsonio import write_json
from ichdet.util.names import path_component, short_hash
from ichdet.util.ray_engine import Engine, cluster_slots, connect

if TYPE_CHECKING:
    from ichdet.inference.predict import Scores
    from ichdet.inference.runners import Runner

PARTS = "parts"
#: Times a series is tried again when its worker dies (then it is listed, not retried).
RETRIES = 3
RUN_KEY = "run.json"
META_KEY = b"ichdet"


@dataclass(frozen=True)
class RayOptions:
    """How ``predict --engine ray`` spreads its work."""

    engine: Engine
    models: tuple[str, ...]  #: what each replica loads (paths every node can read)
    device: str = "auto"
    tta: bool = False
    batch_size: int = 32
    replicas: int = 0  #: model actors (each keeps the model loaded); 0: as many as fit
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    workers: int = 1  #: CPUs of the Ray instance started here when there is no address
    #: decode in CPU tasks apart from the replicas (None: when the replicas have GPUs)
    decode_tasks: bool | None = None

    @property
    def separate_decode(self) -> bool:
        return self.gpus_per_replica > 0 if self.decode_tasks is None else self.decode_tasks

    def replica_count(self, ray: Any) -> int:
        """``replicas``, or as many as the cluster's GPUs (or CPUs, without GPUs) hold."""
        if self.replicas > 0:
            return self.replicas
        if self.gpus_per_replica > 0:
            return cluster_slots(ray, self.gpus_per_replica, "GPU")
        return cluster_slots(ray, self.cpus_per_replica)

    def load(self) -> Runner:
        from ichdet.inference.runners import load_runner

        return load_runner(list(self.models), self.device, self.tta, self.batch_size)


@dataclass
class RayRun:
    """What a Ray predict did: series scored now, series found finished from an earlier run."""

    scored: int = 0
    resumed: int = 0


class SeriesScorer:
    """A Ray Data actor: loads the model once, scores one series per call (decoding it first
    when no decode task did) and returns its part (Parquet bytes)."""

    def __init__(self, options: RayOptions):
        self.runner = options.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ichdet.inference.predict import score_decoded

        item = {k: v[0] for k, v in batch.items()}
        if "volume" not in item:
            spec = self.runner.spec
            item = _decode_series(item, spec.settings, spec.context)
        chunks = json.loads(str(item["chunks"]))
        volume = np.array(item["volume"])  # a writable copy (torch reads it in place)
        decoded: list[tuple[list[str], np.ndarray | None, list]] = []
        for ids, (start, stop) in zip(chunks["ids"], chunks["bounds"], strict=True):
            decoded.append((ids, volume[start:stop] if stop > start else None, []))
        z = dict(zip(chunks["all_ids"], chunks["z"], strict=True))
        key = (str(item["study_id"]), str(item["series_id"]))
        scores = score_decoded(self.runner, [(key, d) for d in decoded], z)
        part = _part_bytes(scores, chunks["errors"], str(item["rows_digest"]))
        return {"name": np.array([str(item["name"])]), "part": np.array([part], dtype=object)}


def _decode_series(item: dict[str, Any], settings: Any, context: int) -> dict[str, Any]:
    """A Ray Data map task: one series' model inputs, decoded chunk by chunk as the local
    engine does, concatenated with the chunk bounds beside them."""
    rows = [tuple(r) for r in json.loads(item["rows"])]
    ids, volumes, bounds, errors, start = [], [], [], [], 0
    for chunk in series_chunks(rows, context):
        chunk_ids, volume, errs = chunk_inputs(chunk, settings, context)
        errors += [list(e) for e in errs]
        count = 0 if volume is None else len(volume)
        if volume is not None:
            volumes.append(volume)
        ids.append(chunk_ids)
        bounds.append([start, start + count])
        start += count
    meta = {"ids": ids, "bounds": bounds, "errors": errors}
    meta |= {"all_ids": [r[0] for r in rows], "z": json.loads(item["z"])}
    volume = np.concatenate(volumes) if volumes else np.zeros((0, 1, 1, 1), np.uint8)
    return {**item, "chunks": json.dumps(meta), "volume": volume}


def _part_bytes(scores: Scores, errors: list, rows_digest: str) -> bytes:
    """A series' part: its slice table, and in the file's metadata its study-head outputs,
    its decode errors and the digest of the rows it was computed from."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    series = None if scores.series is None else scores.series.iloc[0][list(LABELS)].tolist()
    meta = {"series": series, "errors": errors + [list(e) for e in scores.errors]}
    meta["rows_digest"] = rows_digest
    meta["worker"] = f"{socket.gethostname()}:{os.getpid()}"  # who scored it, for the record
    table = pa.Table.from_pandas(scores.slices, preserve_index=False)
    table = table.replace_schema_metadata({**table.schema.metadata, META_KEY: json.dumps(meta)})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _read_part(path: Path) -> tuple[pd.DataFrame, dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return table.to_pandas(), json.loads(table.schema.metadata[META_KEY])


def _part_meta(path: Path) -> dict | None:
    """A part's metadata, or None when it is missing or unreadable (then it is redone)."""
    import pyarrow.parquet as pq

    try:
        return json.loads(pq.read_schema(path).metadata[META_KEY])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run_key(runner: Runner, options: RayOptions) -> dict:
    settings = asdict(runner.spec.settings)
    return {
        "model_digest": getattr(runner, "digest", ""),
        "series_stage_digest": getattr(runner.series, "digest", ""),
        "tta": options.tta,
        "settings": json.loads(json.dumps(settings, default=str)),
        "context": runner.spec.context,
    }


def _start_parts(out: Path, key: dict) -> Path:
    """``out/parts``, emptied when its parts came from another model or other settings."""
    folder = out / PARTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RUN_KEY
    if path.is_file() and json.loads(path.read_text()) != key:
        for part in folder.glob("*.parquet"):
            part.unlink()
    write_json(path, key)
    return folder


def _absolute(row: tuple[str, str, str]) -> tuple[str, str, str]:
    """A decode row with absolute paths: Ray's workers need not share the driver's folder."""
    image_id, source, kind = row
    if kind == "slab":
        return image_id, json.dumps([os.path.abspath(s) for s in json.loads(source)]), kind
    return image_id, os.path.abspath(source), kind


def _series_items(rows: pd.DataFrame) -> list[dict[str, Any]]:
    items = []
    for (study, series), group in rows.groupby(["study_id", "series_id"], sort=False):
        decode_rows = [_absolute(r) for r in frame_rows(group)]
        z = [float(v) for v in group["z"]]
        text = json.dumps(decode_rows)
        items.append(
            {
                "name": f"{path_component(str(series))}.parquet",
                "study_id": str(study),
                "series_id": str(series),
                "rows": text,
                "z": json.dumps(z),
                "rows_digest": short_hash(text + json.dumps(z), 32),
                "images": len(decode_rows),
            }
        )
    return items


def ray_score_series(
    runner: Runner,
    options: RayOptions,
    rows: pd.DataFrame,
    out: Path,
    progress: Callable[[int], None] | None = None,
) -> tuple[Scores, RayRun]:
    """Score every series of ``rows`` on the Ray cluster (see the module docstring)."""
    folder = _start_parts(out, _run_key(runner, options))
    items = _series_items(rows)
    todo, run = [], RayRun()
    for item in items:
        meta = _part_meta(folder / item["name"])
        if meta is not None and meta.get("rows_digest") == item["rows_digest"]:
            run.resumed += 1
            progress and progress(item["images"])
        else:
            todo.append(item)
    if todo:
        _score_on_ray(runner, options, todo, folder, progress, run)
    return _gather(folder, items, runner.series is not None), run


def _score_on_ray(
    runner: Runner,
    options: RayOptions,
    todo: list[dict[str, Any]],
    folder: Path,
    progress: Callable[[int], None] | None,
    run: RayRun,
) -> None:
    """Series -> (decode tasks ->) scoring actors -> parts written here (:func:`_pipeline`).
    Ray's own fault tolerance
    applies: a task whose worker dies runs again (``RETRIES`` times), an actor that dies is
    restarted and its series given again. A series that still fails is dropped from the
    stream (not the run) and reported by :func:`_gather`."""
    ray = connect(options.engine, options.workers)
    images = {item["name"]: item["images"] for item in todo}
    context = ray.data.DataContext.get_current()
    saved, context.max_errored_blocks = context.max_errored_blocks, -1
    try:
        dataset = _pipeline(ray, runner, options, todo)
        written: set[str] = set()
        for result in dataset.iter_rows():
            name = str(result["name"])
            if name in written:  # a retried task's second answer: written already
                continue
            write_bytes(folder / name, bytes(result["part"]))
            written.add(name)
            run.scored += 1
            progress and progress(images[name])
    finally:
        context.max_errored_blocks = saved


def _pipeline(ray: Any, runner: Runner, options: RayOptions, todo: list[dict[str, Any]]) -> Any:
    """The Ray Dataset. With GPUs: decode tasks (1 CPU each) feeding the GPU actors; on CPUs
    alone each replica decodes its own series (no image crosses the object store, and no CPU
    waits for another's model). Ray Data retries a failed task without limit by default, so a
    series whose decode kills its worker would be retried forever: here ``RETRIES`` times,
    then it is dropped and listed. (Ray 2.60 marks these per-operator remote arguments
    deprecated, with no replacement yet.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        dataset = ray.data.from_items(todo, override_num_blocks=len(todo))
        if options.separate_decode:
            decode = dict(settings=runner.spec.settings, context=runner.spec.context)
            dataset = dataset.map(_decode_series, fn_kwargs=decode, num_cpus=1, max_retries=RETRIES)
        return dataset.map_batches(
            SeriesScorer,
            fn_constructor_kwargs={"options": options},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=options.replica_count(ray)),
            num_cpus=options.cpus_per_replica,
            num_gpus=options.gpus_per_replica,
            max_task_retries=RETRIES,
        )


#: Why the images of a series that failed on the cluster have no prediction.
RAY_FAILED = "its series failed on the Ray cluster (a worker died on it again and again)"


def _gather(folder: Path, items: list[dict[str, Any]], staged: bool) -> Scores:
    """The parts of ``items``, in plan order, as the local engine's Scores."""
    from ichdet.inference.predict import Scores

    slices, series, errors = [], [], []
    for item in items:
        if not (folder / item["name"]).is_file():
            errors += [(display_source(tuple(r)), RAY_FAILED) for r in json.loads(item["rows"])]
            continue
        frame, meta = _read_part(folder / item["name"])
        slices.append(frame)
        errors += [tuple(e) for e in meta["errors"]]
        if staged and meta["series"] is not None:
            series.append((item["study_id"], item["series_id"], *meta["series"]))
    columns = ["image_id", *LABELS, *((f"cnn_{n}" for n in LABELS) if staged else ())]
    table = pd.concat(slices, ignore_index=True) if slices else pd.DataFrame(columns=columns)
    frame = pd.DataFrame(series, columns=["study_id", "series_id", *LABELS]) if staged else None
    return Scores(table[columns], errors, frame)
