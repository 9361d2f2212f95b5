"""The DICOMweb client's own rules, without a PACS: URLs, tokens, queries, retries, paging and
hostile UIDs (a small HTTP server on loopback plays the misbehaving server)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("dicomweb_client", reason="pip install 'ichdet[dicomweb]'")

from ichdet.dicomweb.client import DicomwebServer, parse_server, read_token  # noqa: E402
from ichdet.dicomweb.fetch import (  # noqa: E402
    MAX_PAGES,
    PAGE,
    find_studies,
    parse_query,
    series_folder,
)


class Fake:
    """A QIDO-RS endpoint on loopback: ``script(path, n)`` gives (status, JSON) of the n-th
    request; every request is recorded with its Authorization header."""

    def __init__(self, script):
        self.requests: list[tuple[str, str | None]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                fake.requests.append((self.path, self.headers.get("Authorization")))
                status, body = script(self.path, len(fake.requests))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dicom-web"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def study(uid: str) -> dict:
    return {"0020000D": {"vr": "UI", "Value": [uid]}}


def test_a_busy_server_is_retried_with_back_off_and_the_token_sent():
    fake = Fake(lambda path, n: (503, {}) if n <= 2 else (200, [study("1.2.3")]))
    try:
        server = DicomwebServer(fake.url, token="abc123")
        assert find_studies(server.client(), {"ModalitiesInStudy": "CT"}) == ["1.2.3"]
    finally:
        fake.stop()
    assert len(fake.requests) == 3
    assert {auth for _, auth in fake.requests} == {"Bearer abc123"}
    assert "ModalitiesInStudy=CT" in fake.requests[-1][0]


def test_a_server_that_always_fails_is_given_up_on():
    fake = Fake(lambda path, n: (500, {}))
    try:
        with pytest.raises(OSError):  # requests' errors are OSErrors: predict reports them
            find_studies(DicomwebServer(fake.url, retries=2).client(), None)
    finally:
        fake.stop()
    assert len(fake.requests) == 3  # the first try and 2 retries


def test_paging_stops_at_a_server_that_ignores_offset():
    """A server that gives the same full page whatever the offset must not loop forever."""
    page = [study(f"1.2.{i}") for i in range(PAGE)]
    fake = Fake(lambda path, n: (200, page))
    try:
        found = find_studies(DicomwebServer(fake.url).client(), None)
    finally:
        fake.stop()
    assert len(found) == PAGE and len(fake.requests) == 2 < MAX_PAGES


def test_pages_are_followed_to_the_end():
    def script(path, n):
        offset = int(path.split("offset=")[1].split("&")[0]) if "offset=" in path else 0
        count = min(PAGE, PAGE + 7 - offset)
        return 200, [study(f"1.3.{offset + i}") for i in range(max(0, count))]

    fake = Fake(script)
    try:
        found = find_studies(DicomwebServer(fake.url).client(), None)
    finally:
        fake.stop()
    assert len(found) == PAGE + 7 and len(fake.requests) == 2


def test_urls_tokens_and_queries_are_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("ICHDET_DICOMWEB_TOKEN", raising=False)
    server = parse_server("dicomweb+https://pacs.example.org/dicom-web/")
    assert server.url == "https://pacs.example.org/dicom-web" and server.token is None
    for bad in ("https://pacs/dicom-web", "dicomweb+file:///etc", "dicomweb+https://u:p@h/x"):
        with pytest.raises(ValueError):
            parse_server(bad)
    monkeypatch.setenv("ICHDET_DICOMWEB_TOKEN", "from-env")
    assert parse_server("dicomweb+http://h/x").token == "from-env"
    assert "from-env" not in repr(parse_server("dicomweb+http://h/x"))
    token = tmp_path / "t"
    token.write_text("two words\n")
    token.chmod(0o600)
    with pytest.raises(ValueError, match="not a token"):
        read_token(token)
    with pytest.raises(ValueError, match="cannot be read"):
        read_token(tmp_path / "missing")
    assert parse_query("StudyDate=20250101-20250131&ModalitiesInStudy=CT") == {
        "StudyDate": "20250101-20250131",
        "ModalitiesInStudy": "CT",
    }
    with pytest.raises(ValueError, match="PatientName"):
        parse_query("PatientName=*")
    with pytest.raises(ValueError):
        parse_query("no equals sign")


def test_uids_from_the_server_never_become_paths_as_they_are(tmp_path):
    root = tmp_path / "fetched"
    for study_uid, series_uid in (("../../etc", "x"), ("1.2", "/abs/path"), ("1.2", "a" * 200)):
        folder = series_folder(root, study_uid, series_uid)
        assert folder.resolve().is_relative_to(root.resolve())
        assert len(folder.relative_to(root).parts) == 2
    assert series_folder(root, "1.2.3", "1.2.3.4") == root / "1.2.3" / "1.2.3.4"


def test_dicomweb_options_with_a_folder_are_refused(tmp_path):
    from typer.testing import CliRunner

    from ichdet.cli import app

    (tmp_path / "model.onnx").write_bytes(b"not read")
    args = ["predict", str(tmp_path / "model.onnx"), str(tmp_path), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*args, "--stow"])
    assert result.exit_code == 1 and "need a dicomweb+ input" in result.output


def test_the_poller_takes_a_study_only_once_its_size_has_settled(tmp_path):
    """A study the scanner is still sending (its instance count growing between polls) is not
    fetched half; a server that gives no count still gets a poll's wait."""
    import datetime as dt
    import threading as th

    from ichdet.serve.dicomweb_poll import DicomwebPoller, poll_key
    from ichdet.serve.store import Store, new_id

    counts = iter(["6", "12", "12", "12"])

    def script(path, n):
        item = study("1.2.3")
        item["00201208"] = {"vr": "IS", "Value": [int(next(counts))]}
        return 200, [item, study("1.2.4")]  # 1.2.4: no count given

    fake = Fake(script)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    taken: list[tuple[str, str]] = []
    try:
        poller = DicomwebPoller(
            DicomwebServer(fake.url), store, tmp_path, th.Event(), every=1.0, settle=0.0
        )

        def queue(client, uid, size):  # what _queue leaves behind: a job keyed by the study
            taken.append((uid, size))
            store.add(new_id(), 1, origin="dicomweb", study_key=poll_key(uid))
            return 1

        poller._queue = queue
        assert poller.poll() == 0  # first seen: 6 instances, and one without a count
        assert poller.poll() == 1 and taken == [("1.2.4", "")]  # 1.2.3 grew to 12
        assert poller.poll() == 1 and taken[-1] == ("1.2.3", "12")  # 12 twice: settled
        empty = Store(f"sqlite:///{tmp_path / 'other.sqlite'}")
        waiting = DicomwebPoller(
            DicomwebServer(fake.url), empty, tmp_path, th.Event(), every=1.0, settle=3600.0
        )
        waiting._queue = lambda client, uid, size: pytest.fail("taken before it settled")
        old = waiting.since = poller.since - dt.timedelta(days=30)
        assert waiting.poll() == 0 and waiting.since == old  # its window stays
    finally:
        fake.stop()
