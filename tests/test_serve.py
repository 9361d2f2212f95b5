"""``ichdet serve``: the API through FastAPI's test client (httpx), with a tiny ONNX model."""

import io
import logging
import time
import zipfile

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402
from serve_fixtures import build_model_and_studies, zip_of  # noqa: E402

from ichdet.inference.runners import load_runner  # noqa: E402
from ichdet.serve.app import Settings, create_app  # noqa: E402
from ichdet.serve.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def model_and_studies(tmp_path_factory):
    return build_model_and_studies(tmp_path_factory.mktemp("serve"))


@pytest.fixture
def client_for(model_and_studies, tmp_path):
    model, _ = model_and_studies
    runner = load_runner([model])
    clients = []

    def make(**settings):
        app = create_app(
            runner, Settings(store=tmp_path / "store", allowed_hosts=("testserver",), **settings)
        )
        client = TestClient(app)
        client.__enter__()  # runs the lifespan: workers start
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _files(paths):
    return [("files", ("upload", p.read_bytes(), "application/dicom")) for p in paths]


def _wait(client, study_id, headers=None, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = client.get(f"/api/v1/studies/{study_id}", headers=headers).json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"study {study_id} not finished: {body}")


def test_upload_predict_and_read_back(client_for, model_and_studies):
    _, studies = model_and_studies
    uid, paths = next(iter(studies.items()))
    client = client_for()
    answer = client.post("/api/v1/studies", files=_files(paths[::-1]))  # any order in
    assert answer.status_code == 202 and answer.json()["status"] == "queued"
    body = _wait(client, answer.json()["id"])
    assert body["status"] == "done" and len(body["slices"]) == len(paths)
    z = [s["z"] for s in body["slices"]]
    assert z == sorted(z)  # z order out
    assert set(body["probabilities"]) == set(body["flags"]) == set(body["key_slices"])
    any_probs = [s["probabilities"]["any"] for s in body["slices"]]
    assert body["key_slices"]["any"] == int(np.argmax(any_probs))
    assert uid not in str(client.get("/api/v1/studies").json())  # worklist: no UIDs
    report = client.get(f"/api/v1/studies/{body['id']}/report")  # written on first request
    assert report.status_code == 200 and "Research use only" in report.text
    assert "Intracranial hemorrhage: study" in report.text


def test_slice_images_windows_and_heat_map(client_for, model_and_studies):
    _, studies = model_and_studies
    client = client_for()
    study_id = client.post("/api/v1/studies", files=_files(next(iter(studies.values())))).json()[
        "id"
    ]
    body = _wait(client, study_id)
    url = f"/api/v1/studies/{study_id}/slices/{body['key_slices']['any']}.png"
    brain, bone = client.get(url), client.get(url + "?window=bone")
    heat = client.get(url + "?overlay=heatmap")
    assert brain.headers["content-type"] == "image/png" and brain.content[:4] == b"\x89PNG"
    assert brain.content != bone.content and heat.content != brain.content
    assert client.get(f"/api/v1/studies/{study_id}/slices/999.png").status_code == 404
    assert client.get(url + "?window=lung").status_code == 422
    assert client.get("/api/v1/studies/../../etc/passwd").status_code == 404
    assert client.get("/api/v1/studies/" + "g" * 32).status_code == 404


def test_segmentation_volumes_overlay_and_report(model_and_studies, tmp_path):
    from serve_fixtures import subdural_segmenter

    from ichdet.inference.seg_runner import load_segmenter

    model, studies = model_and_studies
    runner = load_runner([model])
    runner.segmenter = load_segmenter([subdural_segmenter(tmp_path / "seg.pt")])
    settings = Settings(store=tmp_path / "store", allowed_hosts=("testserver",))
    with TestClient(create_app(runner, settings)) as client:
        paths = next(iter(studies.values()))
        study_id = client.post("/api/v1/studies", files=_files(paths)).json()["id"]
        body = _wait(client, study_id)
        seg = body["segmentation"]
        assert seg["volume_ml_subdural"] == seg["volume_ml_any"] > 0
        assert seg["volume_ml_epidural"] == 0 and seg["thickness_mm_subdural"] > 0
        url = f"/api/v1/studies/{study_id}/slices/0.png"
        plain, drawn = client.get(url), client.get(url + "?overlay=segmentation")
        assert drawn.status_code == 200 and drawn.content != plain.content
        report = client.get(f"/api/v1/studies/{study_id}/report")
        assert "Segmentation: how much and where" in report.text


def test_segmentation_overlay_without_a_segmenter_is_404(client_for, model_and_studies):
    _, studies = model_and_studies
    client = client_for()
    study_id = client.post("/api/v1/studies", files=_files(next(iter(studies.values())))).json()
    body = _wait(client, study_id["id"])
    assert "segmentation" not in body
    answer = client.get(f"/api/v1/studies/{body['id']}/slices/0.png?overlay=segmentation")
    assert answer.status_code == 404


def test_zip_of_two_studies_gives_two_jobs_and_a_sorted_paged_worklist(
    client_for, model_and_studies
):
    _, studies = model_and_studies
    (_, a), (_, b) = list(studies.items())[:2]
    client = client_for()
    answer = client.post(
        "/api/v1/studies", files=[("files", ("x.zip", zip_of(a + b), "application/zip"))]
    )
    assert answer.status_code == 202
    ids = [j["id"] for j in answer.json()]
    assert len(ids) == 2
    for i in ids:
        _wait(client, i)
    page = client.get("/api/v1/studies?limit=1").json()
    assert page["total"] == 2 and len(page["items"]) == 1
    items = client.get("/api/v1/studies").json()["items"]
    keys = [(not j["flags"]["any"], -j["probabilities"]["any"]) for j in items]
    assert keys == sorted(keys)  # flagged first, then by p(any)


def test_bad_uploads_get_a_reason_and_the_server_keeps_serving(
    client_for, model_and_studies, write_ct
):
    _, studies = model_and_studies
    client = client_for(max_upload_bytes=20 * 2**20)
    not_dicom = client.post("/api/v1/studies", files=[("files", ("a.dcm", b"hello" * 100, "x"))])
    assert not_dicom.status_code == 422 and "no readable CT slice" in not_dicom.json()["detail"]
    paths = next(iter(studies.values()))
    truncated = paths[0].read_bytes()[:600]
    answer = client.post("/api/v1/studies", files=[("files", ("t", truncated, "x"))])
    assert answer.status_code == 422
    mr = write_ct("mr.dcm", np.zeros((32, 32), np.int16), modality="MR")
    answer = client.post("/api/v1/studies", files=_files([mr]))
    assert answer.status_code == 422 and "CT" in answer.json()["detail"]
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", b"\0" * (10 * 2**20))  # ~1000:1
    answer = client.post("/api/v1/studies", files=[("files", ("b.zip", bomb.getvalue(), "x"))])
    assert answer.status_code == 413 and "ratio" in answer.json()["detail"]
    big = client.post("/api/v1/studies", files=[("files", ("x", b"\0" * (21 * 2**20), "x"))])
    assert big.status_code == 413
    ok = client.post("/api/v1/studies", files=_files(paths))
    assert ok.status_code == 202 and _wait(client, ok.json()["id"])["status"] == "done"
    metrics = client.get("/metrics").text
    assert "ichdet_studies_processed_total 1.0" in metrics
    assert 'ichdet_uploads_refused_total{status="413"} 2.0' in metrics


def test_no_file_is_named_from_the_request(client_for, model_and_studies, tmp_path):
    _, studies = model_and_studies
    client = client_for()
    path = next(iter(studies.values()))[0]
    files = [("files", ("../../escape.dcm", path.read_bytes(), "x"))]
    study_id = client.post("/api/v1/studies", files=files).json()["id"]
    _wait(client, study_id)
    names = {p.name for p in (tmp_path / "store" / "studies" / study_id / "files").iterdir()}
    assert names == {"0.dcm"}
    assert not list(tmp_path.rglob("escape.dcm"))


def test_a_full_queue_answers_429_with_retry_after(client_for, model_and_studies):
    _, studies = model_and_studies
    client = client_for(queue_size=0)
    answer = client.post("/api/v1/studies", files=_files(next(iter(studies.values()))))
    assert answer.status_code == 429 and answer.headers["retry-after"] == "10"


def test_a_token_guards_the_api_but_not_the_health_check(client_for, model_and_studies):
    _, studies = model_and_studies
    client = client_for(token="s3cret")
    assert client.get("/api/v1/studies").status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/healthz").status_code == 200
    headers = {"Authorization": "Bearer s3cret"}
    assert client.get("/api/v1/studies", headers=headers).status_code == 200
    wrong = {"Authorization": "Bearer nope"}
    paths = next(iter(studies.values()))
    assert client.post("/api/v1/studies", files=_files(paths), headers=wrong).status_code == 401
    answer = client.post("/api/v1/studies", files=_files(paths), headers=headers)
    assert _wait(client, answer.json()["id"], headers)["status"] == "done"


def test_delete(client_for, model_and_studies, tmp_path):
    _, studies = model_and_studies
    client = client_for()
    study_id = client.post("/api/v1/studies", files=_files(next(iter(studies.values())))).json()[
        "id"
    ]
    _wait(client, study_id)
    assert client.delete(f"/api/v1/studies/{study_id}").status_code == 204
    assert client.get(f"/api/v1/studies/{study_id}").status_code == 404
    assert not (tmp_path / "store" / "studies" / study_id).exists()


def test_studies_left_running_by_a_dead_server_are_processed_after_restart(
    client_for, model_and_studies, tmp_path
):
    """A crash mid-study: the row says running, its files are on disk. A new server finishes
    it (attempt 2), and a half-received upload folder is swept."""
    _, studies = model_and_studies
    client = client_for()
    study_id = client.post("/api/v1/studies", files=_files(next(iter(studies.values())))).json()[
        "id"
    ]
    _wait(client, study_id)
    client.__exit__(None, None, None)
    store = Store(f"sqlite:///{tmp_path / 'store' / 'ichdet.db'}")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE studies SET status='running', result=NULL")
    mine = client.app.state.ctx.incoming_prefix + "x"
    (tmp_path / "store" / mine).mkdir()
    (tmp_path / "store" / "incoming-other-server-x").mkdir()  # not this server's to sweep
    client = client_for()
    body = _wait(client, study_id)
    assert body["status"] == "done" and store.get(study_id).attempts == 2
    assert not (tmp_path / "store" / mine).exists()
    assert (tmp_path / "store" / "incoming-other-server-x").exists()


def test_log_lines_carry_no_patient_ids(client_for, model_and_studies, caplog):
    _, studies = model_and_studies
    uid, paths = next(iter(studies.items()))
    client = client_for()
    with caplog.at_level(logging.INFO, logger="ichdet.serve"):
        study_id = client.post("/api/v1/studies", files=_files(paths)).json()["id"]
        _wait(client, study_id)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert study_id in text and uid not in text and "ID_" not in text


def test_no_cross_origin_headers(client_for):
    client = client_for()
    answer = client.options(
        "/api/v1/studies",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in answer.headers
    got = client.get("/api/v1/studies", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in got.headers


def test_retention_deletes_finished_studies_past_their_time(
    client_for, model_and_studies, tmp_path
):
    _, studies = model_and_studies
    client = client_for(retention_days=1)
    study_id = client.post("/api/v1/studies", files=_files(next(iter(studies.values())))).json()[
        "id"
    ]
    _wait(client, study_id)
    ctx = client.app.state.ctx
    with ctx.store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE studies SET received = received - 2 * 86400")
    ctx.processor.last_cleanup = 0.0
    ctx.processor.cleanup()
    assert client.get(f"/api/v1/studies/{study_id}").status_code == 404
    assert not (tmp_path / "store" / "studies" / study_id).exists()


def test_binding_beyond_loopback_needs_a_token(model_and_studies, tmp_path):
    from typer.testing import CliRunner

    from ichdet.cli import app

    model, _ = model_and_studies
    result = CliRunner().invoke(
        app, ["serve", str(model), "--host", "0.0.0.0", "--store", str(tmp_path / "s")]
    )
    assert result.exit_code != 0 and "--token-file" in result.output


def test_a_run_folder_is_exported_to_onnx_once(model_and_studies, tmp_path):
    from ichdet.serve.model import load_model

    model, _ = model_and_studies
    run = model.parent / "run"
    first = load_model(run, tmp_path, device="cpu")
    exported = next((tmp_path / "model").glob("*.onnx"))
    stamp = exported.stat().st_mtime_ns
    second = load_model(run, tmp_path, device="cpu")
    assert exported.stat().st_mtime_ns == stamp  # cached, not exported again
    assert first.names == second.names == [exported.name]
