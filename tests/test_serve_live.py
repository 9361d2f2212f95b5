"""``ichdet serve`` as a real process on the loopback interface: the web page in Chromium
(Playwright), and a SIGKILL while studies are queued and running."""

import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx", reason="the 'dev' extra is not installed")
pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
from serve_fixtures import LiveServer as Server  # noqa: E402
from serve_fixtures import build_model_and_studies, subdural_segmenter  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def model_and_studies(tmp_path_factory):
    return build_model_and_studies(tmp_path_factory.mktemp("live"))


def _upload(url, paths):
    files = [("files", ("upload", p.read_bytes(), "application/dicom")) for p in paths]
    answer = httpx.post(url + "/api/v1/studies", files=files, timeout=60)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def _wait_all(url, ids, timeout=120):
    deadline = time.time() + timeout
    bodies = {}
    while time.time() < deadline:
        bodies = {i: httpx.get(f"{url}/api/v1/studies/{i}", timeout=10).json() for i in ids}
        if all(b["status"] in ("done", "failed") for b in bodies.values()):
            return bodies
        time.sleep(0.2)
    raise AssertionError({i: b["status"] for i, b in bodies.items()})


@pytest.mark.slow
def test_sigkill_with_studies_queued_and_running_loses_none(model_and_studies, tmp_path):
    model, studies = model_and_studies
    server = Server(model, tmp_path / "store")
    uploads = ([paths for paths in studies.values()] * 4)[:20]  # 20 concurrent uploads
    try:
        with ThreadPoolExecutor(20) as pool:
            ids = list(pool.map(lambda p: _upload(server.url, p), uploads))
        time.sleep(0.3)  # some running, most queued
    finally:
        server.stop(signal.SIGKILL)
    server = Server(model, tmp_path / "store", port=server.port)
    try:
        bodies = _wait_all(server.url, ids)
        listed = httpx.get(server.url + "/api/v1/studies?limit=100").json()
    finally:
        server.stop()
    assert all(b["status"] == "done" for b in bodies.values())
    assert listed["total"] == len(ids) == len(set(ids))  # each study once, none lost


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium")
def test_the_page_uploads_lists_and_views_a_study(model_and_studies, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    model, studies = model_and_studies
    paths = next(iter(studies.values()))
    segmenter = subdural_segmenter(tmp_path / "seg.pt")  # calls everything subdural
    server = Server(model, tmp_path / "store", "--segmenter", segmenter)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            # wait_for_function evaluates strings, which the page's CSP forbids: bypassed here
            # only; the next test runs the page under its CSP
            page = browser.new_page(bypass_csp=True)
            page.goto(server.url + "/")
            assert "Research use only" in page.inner_text("#banner")
            page.set_input_files("#file-input", [str(x) for x in paths])
            row = page.locator("#worklist tbody tr", has_text="done")
            row.wait_for(timeout=60_000)
            cells = row.locator("td").all_inner_texts()
            assert cells[9]  # the flags column ("-" when none is raised)
            assert cells[1] and cells[5]  # the patient id and the series read, for the reader
            page.fill("#search", "no-such-patient")
            page.wait_for_function("!document.querySelector('#worklist tbody tr')")
            page.fill("#search", "")
            row.wait_for(timeout=10_000)
            page.click("#worklist th[data-sort=patient_id]")
            page.wait_for_selector("#worklist th.asc")
            row.click()
            slice_image = page.locator("#slice")
            page.wait_for_function("document.getElementById('slice').naturalWidth > 0")
            assert page.locator("#summary tbody tr").count() == 6
            page.click("button[data-window=bone]")
            page.wait_for_function("document.getElementById('slice').dataset.window === 'bone'")
            page.check("#overlay")
            page.wait_for_function("document.getElementById('slice').dataset.overlay === 'heatmap'")
            assert "Blood volume (segmentation)" in page.inner_text("#volumes")
            page.check("#seg-overlay")
            page.wait_for_function(
                "document.getElementById('slice').dataset.overlay === 'segmentation'"
            )
            first = int(slice_image.get_attribute("data-n"))
            page.keyboard.press("ArrowDown" if first == 0 else "ArrowUp")
            page.wait_for_function(
                f"Number(document.getElementById('slice').dataset.n) !== {first}"
            )
            page.locator("a.key-slice").first.click()
            label = page.inner_text("#slice-label")
            assert label.startswith("slice ") and f"/ {len(paths)}" in label
            browser.close()
    finally:
        server.stop()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium")
def test_the_page_lists_a_study_that_cannot_be_read_apart(model_and_studies, tmp_path):
    """A bone-kernel series alone: listed under "Not assessable" with the reason, never in the
    worklist with a probability; opening it says why."""
    import pydicom

    from ichdet.dicom.read import quiet_pydicom
    from ichdet.synth.studies import synthesize

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    synthesize(tmp_path / "data", studies=1, size=48, test_fraction=0.0, series=("bone",))
    with quiet_pydicom():
        bone = [
            str(p)
            for p in (tmp_path / "data" / "stage_2_train").glob("*.dcm")
            if pydicom.dcmread(p, stop_before_pixels=True).SeriesNumber == 3
        ]
    server = Server(model_and_studies[0], tmp_path / "store")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()  # under the page's Content-Security-Policy
            violations: list[str] = []
            page.on("console", lambda m: violations.append(m.text) if "Policy" in m.text else 0)
            page.goto(server.url + "/")
            page.set_input_files("#file-input", bone)
            row = page.locator("#unassessable tbody tr", has_text="only bone-kernel series")
            row.wait_for(timeout=60_000)
            assert page.locator("#worklist tbody tr").count() == 0
            row.click()
            page.locator("#warning:not([hidden])").wait_for(timeout=10_000)
            warning = page.inner_text("#warning")
            assert warning.startswith("NOT ASSESSABLE: only bone-kernel series")
            assert "bone kernel (BONE)" in warning  # each series with why it was not read
            assert not violations
            browser.close()
    finally:
        server.stop()
