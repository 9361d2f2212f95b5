"""PostgreSQL for real (issue 17, item 13): Debian's PostgreSQL started in a temporary folder on
a loopback port, two ``ichdet serve`` processes on one database and one store folder, twenty
studies uploaded across both, one server killed with SIGKILL mid-run and started again: every
study ends done, and done exactly once (the audit log's ``done`` events)."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx", reason="the 'dev' extra is not installed")
pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")
from serve_fixtures import LiveServer, build_model_and_studies, free_port  # noqa: E402

PG_BIN = next(
    (str(p.parent) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))),
    str(Path(shutil.which("initdb") or "/nonexistent").parent),
)
INITDB = Path(PG_BIN) / "initdb"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not INITDB.exists(), reason="PostgreSQL is not installed (postgresql)"),
]


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: as the postgres user then."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture
def postgres():
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser")
    folder = Path(tempfile.mkdtemp(prefix="ichdet-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()
    data = folder / "data"
    run = {"check": True, "capture_output": True, "timeout": 120}
    subprocess.run(
        _as_postgres([str(INITDB), "-D", str(data), "-U", "ichdet", "-A", "trust"]), **run
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    pg_ctl = [str(Path(PG_BIN) / "pg_ctl"), "-D", str(data)]
    start = [*pg_ctl, "-o", options, "-l", str(folder / "log"), "-w", "start"]
    subprocess.run(_as_postgres(start), check=True, stdout=subprocess.DEVNULL, timeout=120)
    try:
        yield f"postgresql+psycopg://ichdet@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([*pg_ctl, "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _server(model, store, database, server_id, port=None):
    return LiveServer(model, store, "--database", database, "--server-id", server_id, port=port)


def test_two_servers_one_database_one_killed_every_study_done_once(postgres, tmp_path):
    model, studies = build_model_and_studies(tmp_path / "model")
    store = tmp_path / "store"
    a = _server(model, store, postgres, "server-a")
    b = _server(model, store, postgres, "server-b")
    ids = []
    try:
        uploads = [list(studies.values())[k % len(studies)] for k in range(20)]
        for k, paths in enumerate(uploads):
            server = a if k % 2 == 0 else b
            files = [("files", ("x", p.read_bytes(), "application/dicom")) for p in paths]
            answer = httpx.post(server.url + "/api/v1/studies", files=files, timeout=60)
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
            if k == 9:
                a.stop(signal.SIGKILL)  # mid-run: studies queued, one perhaps running
                a = _server(model, store, postgres, "server-a", port=a.port)
        deadline = time.time() + 180
        while time.time() < deadline:
            status = [httpx.get(f"{b.url}/api/v1/studies/{i}").json()["status"] for i in ids]
            if all(s == "done" for s in status):
                break
            time.sleep(0.5)
        assert all(s == "done" for s in status), status
        events = httpx.get(f"{b.url}/api/v1/audit?limit=10000").json()["events"]
        done = [e["study_id"] for e in events if e["action"] == "done"]
        assert sorted(done) == sorted(ids)  # each study done exactly once
    finally:
        a.stop()
        b.stop()
