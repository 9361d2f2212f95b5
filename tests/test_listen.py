"""``ichdet listen``: the DICOM Storage SCP, DICOM results and their delivery, with pynetdicom as
sender and receiver on loopback ports."""

import shutil
import subprocess
import threading
import time

import pydicom
import pytest

pytest.importorskip("pynetdicom", reason="the 'serve' extra is not installed")
import highdicom as hd  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    Comprehensive3DSRStorage,
    CTImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)
from serve_fixtures import (  # noqa: E402
    ORTHANC,
    Orthanc,
    build_model_and_studies,
    ct_study,
    free_port,
    subdural_segmenter,
)

from ichdet.inference.runners import load_runner  # noqa: E402
from ichdet.serve.context import Context, Settings  # noqa: E402

DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_model_and_studies(tmp_path_factory.mktemp("listen"))[0]


@pytest.fixture(scope="module")
def runner(model):
    return load_runner([model])


class Receiver:
    """A pynetdicom SCP that keeps what it is sent (the PACS side of the results)."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self.got: list[pydicom.Dataset] = []
        ae = AE(ae_title="RECV")
        for uid in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
            ae.add_supported_context(uid, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])

        def keep(event):
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.got.append(ds)
            return 0x0000

        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, keep)]
        )

    def wait(self, count, timeout=60):
        deadline = time.time() + timeout
        while len(self.got) < count and time.time() < deadline:
            time.sleep(0.1)
        return self.got

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def service(runner, tmp_path):
    started = []

    def start(**settings):
        port = free_port()
        ctx = Context(
            runner,
            Settings(store=tmp_path / "store", dicom_port=port, quiet_seconds=0.5, **settings),
        )
        ctx.start()
        started.append(ctx)
        return ctx, port

    yield start
    for ctx in started:
        ctx.stop()


def _sender(syntaxes=(ExplicitVRLittleEndian,)):
    ae = AE(ae_title="SCANNER")
    for syntax in syntaxes:  # one presentation context per transfer syntax
        ae.add_requested_context(CTImageStorage, [syntax])
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification
    return ae


def _wait_done(store, count, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        jobs, _ = store.worklist(0, 100)
        if len(jobs) >= count and all(j.status in ("done", "failed") for j in jobs):
            return jobs
        time.sleep(0.1)
    raise AssertionError(f"not done: {[(j.status, j.files) for j in store.worklist(0, 100)[0]]}")


def _references(ds):
    found = set()
    for item in ds.get("ContentSequence", []):
        found |= {r.ReferencedSOPInstanceUID for r in item.get("ReferencedSOPSequence", [])}
        found |= _references(item)
    return found


def test_a_study_sent_over_dicom_comes_back_as_sr_and_secondary_captures(
    service, tmp_path, write_ct
):
    from conftest import transcode

    paths = ct_study(tmp_path / "study")
    transcode(paths[3], tmp_path / "jpeg.dcm", "jpeg-lossless")  # real archives compress
    receiver = Receiver()
    ctx, port = service(send_to=f"RECV@127.0.0.1:{receiver.port}")
    sent = [pydicom.dcmread(p) for p in paths]
    sent[3] = pydicom.dcmread(tmp_path / "jpeg.dcm")
    assoc = _sender([ExplicitVRLittleEndian, JPEGLosslessSV1]).associate(
        "127.0.0.1", port, ae_title="ICHDET"
    )
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    for ds in [*sent, sent[0]]:  # and one duplicate
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    (job,) = _wait_done(ctx.store, 1)
    assert job.status == "done" and job.origin == "dicom" and job.files == len(paths)
    got = receiver.wait(2)
    receiver.stop()
    sr = next(d for d in got if d.Modality == "SR")
    captures = [d for d in got if d.Modality == "OT"]
    study_uid = sent[0].StudyInstanceUID
    inputs = {d.SOPInstanceUID for d in sent}
    assert sr.StudyInstanceUID == study_uid and sr.SeriesInstanceUID != sent[0].SeriesInstanceUID
    assert sr.CompletionFlag == "PARTIAL" and sr.VerificationFlag == "UNVERIFIED"
    assert _references(sr) and _references(sr) <= inputs
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr)
    names = [i.ConceptNameCodeSequence[0].CodeMeaning for i in parsed.ContentSequence]
    assert names.count("Finding") == 6 and "Algorithm Name" in names
    assert captures and all(c.StudyInstanceUID == study_uid for c in captures)
    assert all(c.BurnedInAnnotation == "YES" for c in captures)
    assert {c.SourceImageSequence[0].ReferencedSOPInstanceUID for c in captures} <= inputs
    if DCIODVFY:
        for path in (ctx.studies / job.id / "dicom").glob("*.dcm"):
            out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
            errors = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]
            assert not errors, (path.name, errors)


def test_refused_objects_leave_the_association_usable(service, tmp_path):
    paths = ct_study(tmp_path / "study", slices=3)
    ctx, port = service()
    assoc = _sender().associate("127.0.0.1", port, ae_title="ICHDET")
    mr_context = [c for c in assoc.rejected_contexts if c.abstract_syntax == MRImageStorage]
    assert mr_context  # other SOP classes are refused at association
    not_ct = pydicom.dcmread(paths[0])
    not_ct.Modality = "MR"
    assert assoc.send_c_store(not_ct).Status == 0xA900
    for path in paths:
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
    assoc.release()
    (job,) = _wait_done(ctx.store, 1)
    assert job.files == 3


def test_interleaved_studies_and_an_aborted_association(service, tmp_path):
    a = ct_study(tmp_path / "a", slices=4, seed=1)
    b = ct_study(tmp_path / "b", slices=6, seed=2)
    ctx, port = service()
    assoc = _sender().associate("127.0.0.1", port, ae_title="ICHDET")
    for pa, pb in zip(a, b[:4], strict=True):  # interleaved on one association
        assert assoc.send_c_store(pydicom.dcmread(pa)).Status == 0x0000
        assert assoc.send_c_store(pydicom.dcmread(pb)).Status == 0x0000
    assoc.abort()  # b's last two slices never come
    jobs = _wait_done(ctx.store, 2)
    assert sorted(j.files for j in jobs) == [4, 4]
    assert all(j.status == "done" for j in jobs)


def test_instances_received_before_a_restart_are_processed(runner, tmp_path):
    paths = ct_study(tmp_path / "study", slices=3)
    inbox = tmp_path / "store" / "dicom-inbox" / "1.2.3"
    inbox.mkdir(parents=True)
    for p in paths:
        shutil.copy(p, inbox / p.name)
    (inbox / ".half.dcm.tmp").write_bytes(b"cut short")
    ctx = Context(
        runner, Settings(store=tmp_path / "store", dicom_port=free_port(), quiet_seconds=0.3)
    )
    ctx.start()
    try:
        (job,) = _wait_done(ctx.store, 1)
    finally:
        ctx.stop()
    assert job.status == "done" and job.files == 3 and job.origin == "dicom"


def test_results_wait_in_the_outbox_until_the_destination_is_up(service, tmp_path):
    paths = ct_study(tmp_path / "study", slices=3)
    down = free_port()
    ctx, port = service(send_to=f"RECV@127.0.0.1:{down}")
    assoc = _sender().associate("127.0.0.1", port, ae_title="ICHDET")
    for p in paths:
        assoc.send_c_store(pydicom.dcmread(p))
    assoc.release()
    (job,) = _wait_done(ctx.store, 1)
    deadline = time.time() + 30
    while (
        time.time() < deadline
        and not (tmp_path / "store" / "outbox" / job.id / "state.json").is_file()
    ):
        time.sleep(0.1)
    time.sleep(0.5)  # at least one failed attempt
    state = (tmp_path / "store" / "outbox" / job.id / "state.json").read_text()
    assert '"attempts": 0' not in state
    receiver = Receiver(port=down)
    try:
        got = receiver.wait(2, timeout=60)  # the back-off retries reach it
    finally:
        receiver.stop()
    sr = next(d for d in got if d.Modality == "SR")
    # three slices are no head series: the SR says the study was not assessed, and why
    finding = next(
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121071"
    )
    assert finding.ConceptCodeSequence[0].CodeMeaning == "Study not assessable by the algorithm"
    assert finding.ContentSequence[0].TextValue.startswith("no series to read: too few slices")
    deadline = time.time() + 10
    while ctx.outbox.pending() and time.time() < deadline:
        time.sleep(0.1)
    assert not ctx.outbox.pending()


def test_predict_writes_dicom_results_for_files(model, tmp_path):
    from typer.testing import CliRunner

    from ichdet.cli import app

    paths = ct_study(tmp_path / "study", slices=10)
    onnx = model
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(onnx),
            str(tmp_path / "study"),
            "-o",
            str(tmp_path / "p"),
            "--dicom-out",
            str(tmp_path / "d"),
        ],
    )
    assert result.exit_code == 0, result.output
    study_uid = pydicom.dcmread(paths[0]).StudyInstanceUID
    written = sorted((tmp_path / "d" / study_uid).glob("*.dcm"))
    assert {p.name.split("_")[0] for p in written} == {"sr", "ot"}


def test_threads_do_not_leak(runner, tmp_path):
    before = threading.active_count()
    ctx = Context(runner, Settings(store=tmp_path / "s", dicom_port=free_port()))
    ctx.start()
    ctx.stop()
    time.sleep(0.5)
    assert threading.active_count() <= before + 1


@pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed: apt-get install orthanc")
def test_orthanc_sends_a_study_and_gets_sr_captures_and_seg_in_the_same_study(model, tmp_path):
    """The real PACS: a study uploaded into Orthanc, sent by Orthanc to `ichdet listen` (with a
    segmenter), and the SR, Secondary Capture and SEG series found in the same study."""
    from ichdet.inference.seg_runner import load_segmenter

    runner = load_runner([model])
    runner.segmenter = load_segmenter([subdural_segmenter(tmp_path / "seg.pt")])
    paths = ct_study(tmp_path / "study", slices=12)  # a head series the model can read
    listener_port = free_port()
    orthanc = Orthanc(tmp_path, listener_port)
    modalities: list = []
    try:
        uploaded = [orthanc.client.post("/instances", content=p.read_bytes()).json() for p in paths]
        study = uploaded[0]["ParentStudy"]
        settings = Settings(
            store=tmp_path / "store",
            dicom_port=listener_port,
            quiet_seconds=0.5,
            send_to=f"ORTHANC@127.0.0.1:{orthanc.dicom}",
        )
        ctx = Context(runner, settings)
        ctx.start()
        try:
            answer = orthanc.client.post("/modalities/ichdet/store", content=study)
            assert answer.status_code == 200, answer.text
            deadline = time.time() + 90
            while time.time() < deadline:
                series = orthanc.client.get(f"/studies/{study}/series").json()
                modalities = sorted(s["MainDicomTags"].get("Modality") for s in series)
                if {"SR", "OT", "SEG"} <= set(modalities):
                    break
                time.sleep(0.2)
            job = ctx.store.worklist(0, 10)[0][0]
        finally:
            ctx.stop()
    finally:
        orthanc.stop()
    assert modalities == ["CT", "OT", "SEG", "SR"]
    seg = next((ctx.studies / job.id / "dicom").glob("seg_*.dcm"))
    if DCIODVFY:
        out = subprocess.run([DCIODVFY, str(seg)], capture_output=True, text=True)
        errors = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]
        assert not errors, errors
    frames = pydicom.dcmread(seg)
    assert frames.StudyInstanceUID == pydicom.dcmread(paths[0]).StudyInstanceUID
    assert [s.SegmentLabel for s in frames.SegmentSequence] == ["subdural"]
    assert int(frames.NumberOfFrames) == len(paths)  # every slice, each frame its source
