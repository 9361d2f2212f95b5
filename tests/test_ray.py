"""--engine ray on a real (local) Ray cluster: the same results as the local engine, a killed
worker retried, an interrupted run resumed, every series written once."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'ichdet[distributed]'")

from ichdet.data.cache import CacheSettings  # noqa: E402
from ichdet.data.index import build_index, write_index  # noqa: E402
from ichdet.data.prepare import prepare, prepare_rows, read_rows  # noqa: E402
from ichdet.inference.predict import predict  # noqa: E402
from ichdet.inference.ray_scores import PARTS, RayOptions, _read_part  # noqa: E402
from ichdet.inference.runners import load_runner  # noqa: E402
from ichdet.labels import LABELS  # noqa: E402
from ichdet.synth.studies import synthesize  # noqa: E402
from ichdet.training.config import SequenceTrainConfig, TrainConfig  # noqa: E402
from ichdet.training.cv import fit_all  # noqa: E402
from ichdet.training.sequence_task import fit_sequence  # noqa: E402
from ichdet.util.ray_engine import Engine, mapper  # noqa: E402

pytestmark = pytest.mark.slow
RAY = Engine("ray")


@pytest.fixture(scope="module")
def cluster():
    """A Ray instance of 2 CPUs on loopback for this module."""
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # loopback (conftest)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """24 synthetic series, a tiny CNN with its series stage (one fold)."""
    root = tmp_path_factory.mktemp("ray")
    synthesize(root / "data", studies=24, seed=5, size=48)
    df, errors, report = build_index(root / "data", folds=2)
    index = write_index(df, errors, report, root / "index.parquet")
    prepare(df, root / "cache", CacheSettings(size=32))
    tiny = dict(model="test_efficientnet", size=32, batch_size=16, workers=0, epochs=1)
    cnn = TrainConfig(index=str(index), cache=str(root / "cache"), out=str(root / "cnn"), **tiny)
    fit_all(cnn, log=lambda s: None)
    seq = SequenceTrainConfig(
        index=str(index),
        cache=str(root / "cache"),
        cnn=str(root / "cnn"),
        out=str(root / "cnn" / "sequence"),
        epochs=1,
        batch_size=2,
        hidden=16,
    )
    fit_all(seq, fit_fold=fit_sequence, log=lambda s: None)
    return root


def _options(root: Path, replicas: int = 1) -> RayOptions:
    return RayOptions(RAY, (str(root / "cnn"),), replicas=replicas)


def _same_outputs(a: Path, b: Path) -> None:
    for name in ("slices.csv", "studies.csv", "series.csv"):
        x, y = pd.read_csv(a / name), pd.read_csv(b / name)
        assert list(x.columns) == list(y.columns) and len(x) == len(y), name
        numbers = x.select_dtypes("number").columns
        np.testing.assert_allclose(x[numbers], y[numbers], atol=1e-6, err_msg=name)
        text = [c for c in x.columns if c not in numbers]
        pd.testing.assert_frame_equal(x[text], y[text], check_dtype=False)


@pytest.fixture(scope="module")
def local(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    predict(load_runner([run / "cnn"]), run / "index.parquet", out, workers=2)
    return out


def _parts(out: Path) -> dict[str, dict]:
    found = {}
    for path in sorted((out / PARTS).glob("*.parquet")):
        frame, meta = _read_part(path)
        found[path.name] = {"meta": meta, "ids": frame["image_id"].tolist()}
    return found


def test_ray_predict_equals_the_local_engine(cluster, run, local, tmp_path):
    runner = load_runner([run / "cnn"])
    result = predict(runner, run / "index.parquet", tmp_path, ray=_options(run, replicas=2))
    series = pd.read_csv(local / "series.csv")
    read = int(series["read"].sum())
    assert result.ray.scored == read == 24 and result.ray.resumed == 0
    _same_outputs(local, tmp_path)
    assert {"cnn_any", *LABELS} <= set(pd.read_csv(tmp_path / "slices.csv").columns)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["engine"] == {"name": "ray", "series_scored": 24, "series_resumed": 0}
    parts = _parts(tmp_path)
    assert len(parts) == 24  # one per SeriesInstanceUID
    ids = [i for p in parts.values() for i in p["ids"]]
    assert len(ids) == len(set(ids)) == len(result.slices)
    assert len({p["meta"]["worker"] for p in parts.values()}) == 2  # both replicas worked


def _actor_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"SeriesScorer" in cmdline:
                pids.append(int(entry))
    return pids


def test_a_killed_worker_is_replaced_and_its_series_done_once(cluster, run, local, tmp_path):
    """The scoring actor is killed (SIGKILL) after its first series: Ray restarts it, the
    series in flight is given again, and every series is written exactly once."""
    runner = load_runner([run / "cnn"])
    killed: list[int] = []

    def kill_first_actor(_n: int) -> None:
        if not killed:
            pids = _actor_pids()
            assert pids, "no scoring actor found to kill"
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed.extend(pids)

    result = predict(
        runner, run / "index.parquet", tmp_path, progress=kill_first_actor, ray=_options(run)
    )
    assert killed
    assert result.ray.scored == 24
    parts = _parts(tmp_path)
    workers = {int(p["meta"]["worker"].rsplit(":", 1)[1]) for p in parts.values()}
    assert set(killed) & workers and workers - set(killed)  # before and after the kill
    ids = [i for p in parts.values() for i in p["ids"]]
    assert len(ids) == len(set(ids))
    _same_outputs(local, tmp_path)


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_without_redoing_finished_series(cluster, run, local, tmp_path):
    runner = load_runner([run / "cnn"])
    seen = []

    def stop_after_three(n: int) -> None:
        seen.append(n)
        if len(seen) == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        predict(
            runner, run / "index.parquet", tmp_path, progress=stop_after_three, ray=_options(run)
        )
    assert not (tmp_path / "manifest.json").exists()  # no finished-looking output
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / PARTS).glob("*.parquet")}
    assert 3 <= len(first) < 24
    time.sleep(0.01)
    result = predict(runner, run / "index.parquet", tmp_path, ray=_options(run))
    assert result.ray.resumed == len(first) and result.ray.scored == 24 - len(first)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / PARTS).glob("*.parquet")}
    assert {k: after[k] for k in first} == first  # finished parts were not written again
    _same_outputs(local, tmp_path)


def test_decode_tasks_apart_from_the_replicas_give_the_same_results(cluster, run, local, tmp_path):
    """The GPU layout (decode as CPU tasks feeding the model actors), run on CPUs."""
    options = RayOptions(RAY, (str(run / "cnn"),), replicas=1, decode_tasks=True)
    result = predict(load_runner([run / "cnn"]), run / "index.parquet", tmp_path, ray=options)
    assert result.ray.scored == 24
    _same_outputs(local, tmp_path)


def test_a_part_of_another_model_is_not_reused(cluster, run, tmp_path):
    runner = load_runner([run / "cnn"])
    predict(runner, run / "index.parquet", tmp_path, ray=_options(run))
    tta = RayOptions(RAY, (str(run / "cnn"),), tta=True, replicas=1)
    result = predict(load_runner([run / "cnn"], tta=True), run / "index.parquet", tmp_path, ray=tta)
    assert result.ray.resumed == 0 and result.ray.scored == 24
    retrained = load_runner([run / "cnn"], tta=True)
    retrained.series.digest = "a retrained series stage"
    result = predict(retrained, run / "index.parquet", tmp_path, ray=tta)
    assert result.ray.resumed == 0 and result.ray.scored == 24


def test_index_and_prepare_on_ray_equal_the_local_engine(cluster, run, tmp_path):
    ray_map = mapper(RAY)
    a, _, _ = build_index(run / "data", folds=2)
    b, _, _ = build_index(run / "data", folds=2, mapper=ray_map)
    pd.testing.assert_frame_equal(a, b)
    rows = read_rows(run / "index.parquet")
    settings = CacheSettings(size=32)
    here, written, _, failed = prepare_rows(rows, tmp_path / "local", settings, workers=2)
    there, written_ray, _, failed_ray = prepare_rows(
        rows, tmp_path / "ray", settings, mapper=ray_map
    )
    assert written == written_ray == len(rows) and not failed and not failed_ray
    entries = list(here.rglob("*.zstd"))
    assert len(entries) == len(rows)
    for entry in entries:
        assert (there / entry.relative_to(here)).read_bytes() == entry.read_bytes()
    _, again, existing, _ = prepare_rows(rows, tmp_path / "ray", settings, mapper=ray_map)
    assert again == 0 and existing == len(rows)  # resumable: nothing redone


def test_a_file_that_kills_its_worker_is_reported_and_the_rest_kept(cluster, tmp_path):
    import sys

    from ichdet.util.ray_engine import ray_map_chunks

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack tests/
    items = [f"item{i}" for i in range(10)]
    out = ray_map_chunks(_die_on_poison, items, max_chunk=5, on_crash=lambda item: [(item, "died")])
    assert out == [(i, "died") if i == "item7" else (i, "ok") for i in items]


def _die_on_poison(items: list[str]) -> list[tuple[str, str]]:
    if "item7" in items:
        os.kill(os.getpid(), signal.SIGKILL)
    return [(i, "ok") for i in items]


def test_the_local_engine_imports_no_ray():
    import subprocess
    import sys

    code = (
        "import sys; from ichdet.inference import predict; from ichdet.data import prepare, index;"
        "from ichdet.util import ray_engine; print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dicomweb_fetches_as_ray_tasks_and_predicts_on_ray(cluster, run, tmp_path):
    """Series fetched by Ray tasks (WADO-RS from Orthanc) and scored on Ray: the same
    probabilities as fetching and predicting here."""
    pytest.importorskip("dicomweb_client", reason="pip install 'ichdet[dicomweb]'")
    from serve_fixtures import DICOMWEB_PLUGIN, ORTHANC, Orthanc, ct_study

    if ORTHANC is None or DICOMWEB_PLUGIN is None:
        pytest.skip("Orthanc and its DICOMweb plugin are not installed (orthanc-dicomweb)")
    from ichdet.dicomweb.client import DicomwebServer
    from ichdet.dicomweb.run import Request, predict_dicomweb

    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True)
    try:
        for seed in (1, 2, 3):
            for path in ct_study(tmp_path / f"s{seed}", slices=12, size=48, seed=seed):
                orthanc.client.post("/instances", content=path.read_bytes()).raise_for_status()
        server = DicomwebServer(f"{orthanc.url}/dicom-web")
        request = Request(query="ModalitiesInStudy=CT")
        runner = load_runner([run / "cnn"])
        here = predict_dicomweb(runner, server, request, tmp_path / "here", workers=2)
        there = predict_dicomweb(
            runner, server, request, tmp_path / "ray", mapper=mapper(RAY), ray=_options(run)
        )
    finally:
        orthanc.stop()
    assert len(here.plans) == len(there.plans) == 3 and not here.failed and not there.failed
    assert there.result.ray.scored == 3
    _same_outputs(tmp_path / "here", tmp_path / "ray")
