"""DICOMweb in and out against a real server: Orthanc with its DICOMweb plugin on loopback.
``ichdet predict MODEL dicomweb+http://...`` finds studies (QIDO-RS), chooses their series from
the metadata, fetches only those (WADO-RS), and stores the SR and captures back (STOW-RS)."""

from __future__ import annotations

import datetime as dt
import os
import time

import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid
from serve_fixtures import DICOMWEB_PLUGIN, ORTHANC, Orthanc, build_model_and_studies, ct_study
from typer.testing import CliRunner

from ichdet.cli import app

pytest.importorskip("dicomweb_client", reason="pip install 'ichdet[dicomweb]'")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed: apt-get install orthanc"),
    pytest.mark.skipif(
        DICOMWEB_PLUGIN is None,
        reason="Orthanc's DICOMweb plugin is not installed: apt-get install orthanc-dicomweb",
    ),
]
cli = CliRunner()
TOKEN = "dw-test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_model_and_studies(tmp_path_factory.mktemp("dw-model"))[0]


def _scout(study_paths, folder):
    """A localizer series (3 images) in the study of ``study_paths``: never worth fetching."""
    folder.mkdir()
    series, paths = generate_uid(), []
    for k, source in enumerate(study_paths[:3]):
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesDescription = "Topogram"
        ds.SeriesNumber = 99
        paths.append(folder / f"{k}.dcm")
        ds.save_as(paths[-1])
    return paths


def _upload(orthanc, paths):
    for path in paths:
        orthanc.client.post("/instances", content=path.read_bytes()).raise_for_status()


def _modalities(orthanc, study_uid):
    found = orthanc.client.post("/tools/lookup", content=study_uid).json()
    study = next(f["ID"] for f in found if f["Type"] == "Study")
    series = orthanc.client.get(f"/studies/{study}/series").json()
    return sorted(s["MainDicomTags"].get("Modality", "") for s in series)


def test_predict_finds_fetches_chosen_series_and_stores_results_back(model, tmp_path):
    a = ct_study(tmp_path / "a", slices=12, seed=1)
    b = ct_study(tmp_path / "b", slices=12, seed=2)
    scout = _scout(a, tmp_path / "scout")
    uids = {str(pydicom.dcmread(p[0]).StudyInstanceUID) for p in (a, b)}
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True)
    try:
        _upload(orthanc, [*a, *b, *scout])
        out = tmp_path / "out"
        url = f"dicomweb+{orthanc.url}/dicom-web"
        args = ["predict", str(model), url, "--query", "ModalitiesInStudy=CT", "--out", str(out)]
        result = cli.invoke(app, [*args, "--stow"])
        assert result.exit_code == 0, result.output
        assert "2 study(ies), 2 series fetched" in result.output
        slices = pd.read_csv(out / "slices.csv")
        assert set(slices["study_id"]) == uids and len(slices) == 24
        fetched = sorted(p.parent.name for p in (out / "dicomweb").rglob("*.dcm"))
        assert len(set(fetched)) == 2  # the localizer was never fetched
        assert str(pydicom.dcmread(scout[0]).SeriesInstanceUID) not in fetched
        with_scout = str(pydicom.dcmread(a[0]).StudyInstanceUID)
        for uid in uids:  # the SR and the Secondary Captures are in the study, on the server
            modalities = _modalities(orthanc, uid)
            ct = 2 if uid == with_scout else 1
            assert modalities.count("CT") == ct and modalities.count("SR") == 1
            assert len(modalities) == ct + 2, modalities  # + the SR + the key-slice captures
        assert "STOW-RS:" in result.output
        again = cli.invoke(app, [*args])  # a rerun finds the series fetched before
        assert again.exit_code == 0, again.output
        assert sorted(p.parent.name for p in (out / "dicomweb").rglob("*.dcm")) == fetched
        uid_b = str(pydicom.dcmread(b[0]).StudyInstanceUID)
        only_b = cli.invoke(app, ["predict", str(model), url, "--study", uid_b, "--out", str(out)])
        assert only_b.exit_code == 0, only_b.output  # earlier studies fetched here stay out
        assert set(pd.read_csv(out / "slices.csv")["study_id"]) == {uid_b}
    finally:
        orthanc.stop()


def test_the_bearer_token_opens_a_server_that_requires_one(model, tmp_path):
    study = ct_study(tmp_path / "a", slices=12, seed=3)
    uid = str(pydicom.dcmread(study[0]).StudyInstanceUID)
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True, token=TOKEN)
    try:
        _upload(orthanc, study)
        url = f"dicomweb+{orthanc.url}/dicom-web"
        args = ["predict", str(model), url, "--study", uid]
        refused = cli.invoke(app, [*args, "--out", str(tmp_path / "no")])
        assert refused.exit_code == 1 and "403" in refused.output
        assert TOKEN not in refused.output
        token = tmp_path / "token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o644)
        loose = cli.invoke(app, [*args, "--out", str(tmp_path / "x"), "--token-file", str(token)])
        assert loose.exit_code == 1 and "readable by others" in loose.output
        token.chmod(0o600)
        ok = cli.invoke(app, [*args, "--out", str(tmp_path / "ok"), "--token-file", str(token)])
        assert ok.exit_code == 0, ok.output
        assert set(pd.read_csv(tmp_path / "ok" / "slices.csv")["study_id"]) == {uid}
        env = cli.invoke(
            app,
            [*args, "--out", str(tmp_path / "env"), "--stow"],
            env={"ICHDET_DICOMWEB_TOKEN": TOKEN},
        )
        assert env.exit_code == 0, env.output
        assert "SR" in _modalities(orthanc, uid)
        assert TOKEN not in ok.output + env.output
    finally:
        orthanc.stop()


def test_a_url_with_credentials_or_another_scheme_is_refused(model, tmp_path):
    for url in ("dicomweb+ftp://host/dicom-web", "dicomweb+https://user:pw@host/dicom-web"):
        result = cli.invoke(app, ["predict", str(model), url, "--study", "1.2", "--out", "o"])
        assert result.exit_code == 1 and "dicomweb+" in result.output
    assert not os.path.exists("o")


def _dated(paths, date):
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.StudyDate = date
        ds.save_as(path)
    return paths


def _wait(predicate, seconds=90):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_serve_watches_a_dicomweb_server_and_queues_each_new_study_once(model, tmp_path):
    """``serve --dicomweb URL --poll S``: a study of today becomes a job, one stored later
    becomes another at a later poll once all of it has arrived, an old study is not asked
    for, none is queued twice."""
    from ichdet.dicomweb.client import DicomwebServer
    from ichdet.inference.runners import load_runner
    from ichdet.serve.context import Context, Settings

    today = dt.date.today().strftime("%Y%m%d")
    first = _dated(ct_study(tmp_path / "a", slices=12, seed=4), today)
    old = _dated(ct_study(tmp_path / "old", slices=12, seed=5), "20190101")
    later = _dated(ct_study(tmp_path / "b", slices=12, seed=6), today)
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True)
    try:
        _upload(orthanc, [*first, *old])
        server = DicomwebServer(f"{orthanc.url}/dicom-web")
        settings = Settings(
            store=tmp_path / "store", dicomweb=server, poll_seconds=0.3, settle_seconds=2.0
        )
        ctx = Context(load_runner([model]), settings)
        ctx.start()
        try:
            assert _wait(lambda: ctx.store.count("done") == 1)
            _upload(orthanc, later[:6])  # the scanner sends half, pauses (polls see it) ...
            time.sleep(0.8)
            assert ctx.store.worklist(0, 10)[1] == 1  # ... and half a study is not taken
            _upload(orthanc, later[6:])
            assert _wait(lambda: ctx.store.count("done") == 2)
            time.sleep(1.5)  # several more polls: nothing new
            jobs, total = ctx.store.worklist(0, 10)
            assert not ctx.down()
        finally:
            ctx.stop()
    finally:
        orthanc.stop()
    assert total == 2 and {j.origin for j in jobs} == {"dicomweb"}
    uids = {str(pydicom.dcmread(p[0]).StudyInstanceUID) for p in (first, later)}
    seen = set()
    for job in jobs:  # the instances fetched, and the SR written as for a DICOM study
        files = sorted((ctx.studies / job.id / "files").glob("*.dcm"))
        assert len(files) == 12
        seen.add(str(pydicom.dcmread(files[0]).StudyInstanceUID))
        assert list((ctx.studies / job.id / "dicom").glob("sr_*.dcm"))
    assert seen == uids
