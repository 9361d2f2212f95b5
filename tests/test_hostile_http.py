"""The HTTP door, tried as an attacker would (issue 17): a live ``ichdet serve`` on loopback for
what needs raw sockets (chunked bodies, slow headers, connection floods, file modes, logs) and
FastAPI's test client for the rest."""

import io
import random
import socket
import subprocess
import sys
import time
import zipfile

import pytest

httpx = pytest.importorskip("httpx", reason="the 'dev' extra is not installed")
pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402
from serve_fixtures import (  # noqa: E402
    LiveServer,
    build_model_and_studies,
    ct_study,
    zip_of,
)

from ichdet.inference.runners import load_runner  # noqa: E402
from ichdet.serve.app import Settings, create_app  # noqa: E402

TOKEN = "t0k3n-" + "x" * 40


@pytest.fixture(scope="module")
def model_and_studies(tmp_path_factory):
    return build_model_and_studies(tmp_path_factory.mktemp("hostile"))


@pytest.fixture
def app_for(model_and_studies, tmp_path):
    runner = load_runner([model_and_studies[0]])
    clients = []

    def make(**settings):
        settings = {"allowed_hosts": ("testserver",), **settings}
        client = TestClient(create_app(runner, Settings(store=tmp_path / "store", **settings)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def live(model_and_studies, tmp_path):
    servers = []
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)

    def start(*args, env=None):
        model, store = model_and_studies[0], tmp_path / "store"
        server = LiveServer(model, store, "--token-file", token_file, *args, env=env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _read_status(sock: socket.socket) -> int:
    head = b""
    try:
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    except ConnectionResetError:
        pass
    return int(head.split(b" ")[1]) if head else 0


def test_no_body_is_read_before_the_token_and_chunked_bodies_are_capped(live, tmp_path):
    """Item 7: Content-Length 100 + chunked, no token: 401 before a body byte is sent; with
    the token, a chunked body over the cap is cut at the cap (413) and nothing stays."""
    server = live("--max-upload-mb", "1")
    head = (
        b"POST /api/v1/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"
        b"Transfer-Encoding: chunked\r\nContent-Type: multipart/form-data; boundary=b\r\n\r\n"
    )
    with server.raw(head) as sock:  # the headers only: the answer comes without a body
        assert _read_status(sock) == 401
    boundary = b"--b\r\nContent-Disposition: form-data; name=files; filename=x\r\n\r\n"
    authed = head.replace(b"Host:", f"Authorization: Bearer {TOKEN}\r\nHost:".encode())
    authed = authed.replace(b"Content-Length: 100\r\n", b"")
    with server.raw(authed) as sock:
        chunk = b"\0" * 65536
        body = [boundary] + [chunk] * 40  # 2.5 MiB against a 1 MiB cap
        status = 0
        try:
            for piece in body:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        except OSError:  # the server answered and closed: what it should do
            pass
        status = _read_status(sock)
    assert status == 413
    assert not list((tmp_path / "store").glob("incoming-*"))


def test_slow_headers_time_out_and_connections_are_limited(live):
    """Item 14: a client that never finishes its headers is cut off; past the connection
    limit the server answers 503 instead of queueing forever."""
    server = live("--max-connections", "4", env={"ICHDET_HEADER_TIMEOUT": "1"})
    slow = server.raw(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    started = time.time()
    assert slow.recv(1) == b""  # closed by the server
    assert time.time() - started < 5
    idle = [server.raw(b"GET /healthz HTTP/1.1\r\n") for _ in range(4)]
    try:
        answer = httpx.get(server.url + "/healthz", timeout=10)
        assert answer.status_code == 503
    finally:
        for sock in idle:
            sock.close()
    time.sleep(1.5)  # the idle ones time out; the server serves again
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200


def test_patient_data_at_rest_and_in_logs(live, model_and_studies, tmp_path):
    """Item 15: store files 0600 and folders 0700; a header value pydicom warns about never
    reaches the log; no /docs; the API description needs the token; security headers."""
    paths = ct_study(tmp_path / "study", slices=8)
    import pydicom

    ds = pydicom.dcmread(paths[0])
    ds.FrameOfReferenceUID = "1.2.826.ACC-SECRET"  # pydicom warns on reading, quoting it
    ds.save_as(paths[0])
    server = live()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    files = [("files", ("x", p.read_bytes(), "application/dicom")) for p in paths]
    answer = httpx.post(server.url + "/api/v1/studies", files=files, headers=headers, timeout=60)
    assert answer.status_code == 202, answer.text
    study = answer.json()["id"]
    deadline = time.time() + 60
    while httpx.get(f"{server.url}/api/v1/studies/{study}", headers=headers).json()["status"] in (
        "queued",
        "running",
    ):
        assert time.time() < deadline
        time.sleep(0.2)
    assert httpx.get(server.url + "/docs").status_code in (401, 404)
    assert httpx.get(server.url + "/openapi.json").status_code == 401
    assert httpx.get(server.url + "/openapi.json", headers=headers).status_code == 200
    page = httpx.get(server.url + "/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    log = server.stop()
    assert "ACC-SECRET" not in log and ds.StudyInstanceUID not in log
    store = tmp_path / "store"
    for path in [store, *store.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode & 0o077 == 0, f"{path.relative_to(store)}: {mode:o}"


def test_the_token_file_must_be_private_and_long(model_and_studies, tmp_path):
    token = tmp_path / "token"
    for text, mode, why in [(TOKEN, 0o644, "readable by others"), ("short", 0o600, "at least")]:
        token.write_text(text)
        token.chmod(mode)
        cmd = [sys.executable, "-m", "ichdet", "serve", str(model_and_studies[0])]
        cmd += ["--token-file", str(token), "--store", str(tmp_path / "s"), "--port", "1"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and why in done.stdout + done.stderr


def test_dns_rebinding_and_cross_site_posts_are_refused(app_for, model_and_studies):
    """Item 10: a Host that is not this server's (DNS rebinding) and a state-changing call
    from another origin (a cross-site form) are refused; the page's own calls pass."""
    client = app_for()
    assert client.get("/api/v1/studies").status_code == 200
    rebound = client.get("/api/v1/studies", headers={"Host": "rebind.attacker.example"})
    assert rebound.status_code == 421
    files = [("files", ("x", b"not dicom", "application/dicom"))]
    evil = {"Origin": "http://evil.example"}
    assert client.post("/api/v1/studies", files=files, headers=evil).status_code == 403
    cross = {"Sec-Fetch-Site": "cross-site"}
    assert client.post("/api/v1/studies", files=files, headers=cross).status_code == 403
    own = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/api/v1/studies", files=files, headers=own).status_code == 422


def _acgt_zip(kib: int, seed: int) -> bytes:
    """A zip whose one member inflates ~4:1 (random letters of a 4-letter alphabet)."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", "".join(rng.choice("ACGT") for _ in range(kib * 1024)))
    return buf.getvalue()


def test_one_inflate_budget_per_upload(app_for, tmp_path):
    """Item 8: six zips, each under the cap inflated, together over it: 413, nothing kept."""
    client = app_for(max_upload_bytes=100 * 1024)
    zips = [_acgt_zip(40, seed) for seed in range(6)]
    assert sum(map(len, zips)) < 100 * 1024 < 6 * 40 * 1024
    files = [("files", (f"{k}.zip", z, "application/zip")) for k, z in enumerate(zips)]
    answer = client.post("/api/v1/studies", files=files)
    assert answer.status_code == 413 and "inflate" in answer.json()["detail"]
    assert not list((tmp_path / "store").glob("incoming-*"))


def test_studies_in_one_upload_count_against_the_queue(app_for, model_and_studies, tmp_path):
    """Item 9: --queue-size 2 and one zip of three studies: 429, nothing queued."""
    _, studies = model_and_studies
    client = app_for(queue_size=2)
    three = [p for paths in list(studies.values())[:3] for p in paths]
    files = [("files", ("s.zip", zip_of(three), "application/zip"))]
    answer = client.post("/api/v1/studies", files=files)
    assert answer.status_code == 429 and answer.headers["retry-after"]
    assert client.get("/api/v1/studies").json()["total"] == 0
    assert not [p for p in (tmp_path / "store" / "studies").iterdir()]


def _wait_done(client, study_id, headers=None):
    deadline = time.time() + 60
    while time.time() < deadline:
        body = client.get(f"/api/v1/studies/{study_id}", headers=headers).json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(0.05)
    raise AssertionError(body)


def _upload(client, paths, headers=None):
    files = [("files", ("x", p.read_bytes(), "application/dicom")) for p in paths]
    answer = client.post("/api/v1/studies", files=files, headers=headers)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def test_a_deletion_cut_short_by_a_crash_is_finished_not_undone(app_for, model_and_studies):
    """Item 11: marked deleting, then the server dies before the files go: at the next start
    the deletion is finished, and the study is never queued again."""
    _, studies = model_and_studies
    client = app_for()
    study_id = _upload(client, next(iter(studies.values())))
    _wait_done(client, study_id)
    ctx = client.app.state.ctx
    assert ctx.store.mark_deleting(study_id)  # ... and the process is killed here
    assert client.get(f"/api/v1/studies/{study_id}").status_code == 404
    client.__exit__(None, None, None)
    client = app_for()
    time.sleep(0.5)
    assert client.get(f"/api/v1/studies/{study_id}").status_code == 404
    assert not (ctx.studies / study_id).exists()
    assert client.app.state.ctx.store.get(study_id) is None


def test_servers_sharing_a_database_recover_only_their_own_jobs(tmp_path):
    """Item 13: a server that starts takes back its own running jobs, not another's; a job
    whose server stopped beating is taken back by any; a late finish of a lost lease fails."""
    from ichdet.serve.store import Store

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a, b = Store(url, owner="a"), Store(url, owner="b")
    a.add("0" * 32, 1)
    a.add("1" * 32, 1)
    assert a.claim_next() == "0" * 32 and b.claim_next() == "1" * 32
    assert b.requeue_interrupted() == 1  # b restarts: its own job only
    assert a.get("0" * 32).status == "running" and a.get("0" * 32).owner == "a"
    a.beat(["0" * 32])
    assert b.requeue_expired(lease=60) == 0  # a is alive
    with a.engine.begin() as conn:  # a stops beating (killed)
        conn.exec_driver_sql("UPDATE studies SET heartbeat = heartbeat - 120")
    assert b.requeue_expired(lease=60) == 1
    assert {b.claim_next(), b.claim_next()} == {"0" * 32, "1" * 32}
    assert not a.finish("0" * 32, {}, False, None)  # a's lease is gone: its result is dropped
    assert b.finish("0" * 32, {}, False, None) and b.get("0" * 32).status == "done"
    a.add("2" * 32, 1)  # left running by an ichdet from before owners: taken back at start
    with a.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE studies SET status='running' WHERE id='{'2' * 32}'")
    assert b.requeue_interrupted() >= 1 and b.get("2" * 32).status == "queued"


def test_the_worklist_shows_patients_to_authenticated_readers_and_audits(
    app_for, model_and_studies, tmp_path
):
    """The worklist a reading room can use: patient name and id, accession, study date,
    description and the series read; searchable and sortable; every view in the audit log
    with the token's identity; nothing without the token."""
    paths = ct_study(tmp_path / "study", slices=12)
    client = app_for(token=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    study_id = _upload(client, paths, headers)
    _wait_done(client, study_id, headers)
    assert client.get("/api/v1/studies").status_code == 401
    items = client.get("/api/v1/studies?q=pat-1", headers=headers).json()["items"]
    assert [i["id"] for i in items] == [study_id]
    assert items[0]["patient"]["patient_name"] == "Test^Patient" and items[0]["series_read"]
    assert client.get("/api/v1/studies?q=nobody", headers=headers).json()["items"] == []
    assert client.get("/api/v1/studies?q=%25", headers=headers).json()["items"] == []  # "%"
    assert client.get(f"/api/v1/studies?offset={10**20}", headers=headers).status_code == 422
    for sort in ("patient_name", "-study_date", "triage"):
        assert client.get(f"/api/v1/studies?sort={sort}", headers=headers).status_code == 200
    assert client.get("/api/v1/studies?sort=reason", headers=headers).status_code == 422
    events = client.get(f"/api/v1/audit?study={study_id}", headers=headers).json()["events"]
    actions = {(e["action"], e["actor"]) for e in events}
    actor = next(a for _, a in actions if a.startswith("token:"))
    assert {("upload", actor), ("view", actor)} <= actions
    assert [a for k, a in actions if k == "done"][0].startswith("server:")
    assert TOKEN not in str(events)


def test_a_store_from_before_this_change_is_upgraded_in_place(tmp_path):
    """An ichdet store written before owners, versions and patient columns: opened, its table
    gets the new columns, its running study is taken back, a late re-read is version 2."""
    import sqlite3

    from ichdet.serve.store import Store

    db = tmp_path / "ichdet.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE studies (id VARCHAR(32) PRIMARY KEY, status VARCHAR(8), received FLOAT,"
            " started FLOAT, finished FLOAT, attempts INTEGER, files INTEGER, origin VARCHAR(8),"
            " reason TEXT, flagged BOOLEAN, p_any FLOAT, result TEXT)"
        )
        conn.execute(f"INSERT INTO studies VALUES ('{'a' * 32}', 'running', 1.0, 1.0, NULL, 1, 3,"
                     " 'dicom', NULL, 0, NULL, NULL)")  # fmt: skip
    store = Store(f"sqlite:///{db}", owner="new-server")
    assert store.requeue_interrupted() == 1
    assert store.claim_next() == "a" * 32
    assert store.finish("a" * 32, {}, False, None, {"patient_name": "X^Y"})
    assert store.reopen("a" * 32, 4) and store.get("a" * 32).version == 2
    assert store.get("a" * 32).patient["patient_name"] == "X^Y"
