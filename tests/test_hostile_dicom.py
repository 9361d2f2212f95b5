"""The DICOM door, tried as an attacker would (issue 17): a live listener on loopback, pynetdicom
as the peer (wrong AE titles, TLS), raw sockets (a flood of idle connections), oversized
instances, a study split by a pause longer than the quiet time, and parts that fail."""

import shutil
import socket
import ssl
import subprocess
import time

import numpy as np
import pydicom
import pytest

pytest.importorskip("pynetdicom", reason="the 'serve' extra is not installed")
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.sop_class import CTImageStorage  # noqa: E402
from serve_fixtures import build_model_and_studies, ct_study, free_port  # noqa: E402

from ichdet.dicom.write import ct_dataset  # noqa: E402
from ichdet.inference.runners import load_runner  # noqa: E402
from ichdet.serve.context import Context, Settings  # noqa: E402
from ichdet.serve.dicom_access import DicomAccess, DicomLimits, Peer  # noqa: E402

OPENSSL = shutil.which("openssl")
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return load_runner([build_model_and_studies(tmp_path_factory.mktemp("door"))[0]])


@pytest.fixture
def service(runner, tmp_path):
    started = []

    def start(access=None, **settings):
        port = free_port()
        access = access or DicomAccess([Peer("SCANNER", "127.0.0.1")])
        settings = {"quiet_seconds": 0.5, **settings}
        ctx = Context(
            runner,
            Settings(store=tmp_path / "store", dicom_port=port, dicom_access=access, **settings),
        )
        ctx.start()
        started.append(ctx)
        return ctx, port

    yield start
    for ctx in started:
        ctx.stop()


def _peer(title="SCANNER"):
    ae = AE(ae_title=title)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context("1.2.840.10008.1.1")
    return ae


def _jobs(ctx):
    return ctx.store.worklist(0, 100)[0]


def _wait(predicate, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_only_allowed_peers_calling_this_ae_title_get_in(service):
    """Item 1: an unknown calling AE title, a known one from the wrong host and a wrong called
    AE title are rejected at association, with the reason DICOM defines."""
    _, port = service(DicomAccess([Peer("SCANNER", "127.0.0.1"), Peer("PACS", "10.255.0.9")]))
    cases = [("EVIL", "ICHDET", 0x03), ("PACS", "ICHDET", 0x03), ("SCANNER", "NOT-ICHDET", 0x07)]
    for calling, called, reason in cases:
        assoc = _peer(calling).associate("127.0.0.1", port, ae_title=called)
        assert assoc.is_rejected, (calling, called)
        assert assoc.acceptor.primitive.diagnostic == reason
    assoc = _peer().associate("127.0.0.1", port, ae_title="ICHDET")
    assert assoc.is_established and assoc.send_c_echo().Status == SUCCESS
    assoc.release()


def _cert(folder, name, ca=None):
    key, crt = folder / f"{name}.key", folder / f"{name}.crt"
    cmd = [OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
    cmd += ["-keyout", str(key), "-out", str(crt), "-subj", f"/CN={name}"]
    cmd += ["-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(cmd, check=True, capture_output=True)
    return crt, key


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
def test_dicom_tls_with_mutual_authentication(service, tmp_path):
    """TLS: the listener's certificate, and with a CA, the peer must present one it signed."""
    server_crt, server_key = _cert(tmp_path, "server")
    client_crt, client_key = _cert(tmp_path, "client")  # self-signed: its own CA
    access = DicomAccess(
        [Peer("SCANNER")], tls_cert=server_crt, tls_key=server_key, tls_ca=client_crt
    )
    _, port = service(access)

    def context(with_cert):
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_crt))
        if with_cert:
            ctx.load_cert_chain(client_crt, client_key)
        return ctx

    plain = _peer().associate("127.0.0.1", port, ae_title="ICHDET")
    assert not plain.is_established
    anonymous = _peer().associate(
        "127.0.0.1", port, ae_title="ICHDET", tls_args=(context(False), "127.0.0.1")
    )
    assert not anonymous.is_established
    mutual = _peer().associate(
        "127.0.0.1", port, ae_title="ICHDET", tls_args=(context(True), "127.0.0.1")
    )
    assert mutual.is_established and mutual.send_c_echo().Status == SUCCESS
    mutual.release()


def test_oversized_instances_full_disks_and_a_full_queue_are_refused(service, tmp_path):
    """Items 2 and 6: over the size cap, under the free-space floor, or a new study with the
    queue full: an out-of-resources status and nothing on disk; far over the cap while it
    arrives: the association is aborted."""
    paths = ct_study(tmp_path / "study", slices=2, size=256)  # ~130 kB each
    limits = DicomLimits(max_instance_bytes=10_000)
    ctx, port = service(DicomAccess([Peer("SCANNER")], limits=limits))
    assoc = _peer().associate("127.0.0.1", port, ae_title="ICHDET")
    assert assoc.send_c_store(pydicom.dcmread(paths[0])).Status == OUT_OF_RESOURCES
    big = ct_dataset(np.zeros((1024, 1024), np.int16), study_instance_uid="1.2.3.4")
    status = assoc.send_c_store(big)  # 2 MiB: past cap + margin, aborted while it arrives
    assert not status
    _wait(lambda: not assoc.is_established, timeout=10)
    ctx.listener.access.limits = DicomLimits(min_free_bytes=2**60)
    assoc = _peer().associate("127.0.0.1", port, ae_title="ICHDET")
    assert assoc.send_c_store(pydicom.dcmread(paths[0])).Status == OUT_OF_RESOURCES
    ctx.listener.access.limits = DicomLimits()
    ctx.settings.queue_size = 0
    assert assoc.send_c_store(pydicom.dcmread(paths[0])).Status == OUT_OF_RESOURCES
    ctx.settings.queue_size = 100
    assert assoc.send_c_store(pydicom.dcmread(paths[0])).Status == SUCCESS
    assoc.release()
    assert len(list((tmp_path / "store" / "dicom-inbox").rglob("*.dcm"))) <= 1


def test_idle_connections_cannot_hold_every_association_slot(service):
    """Item 3: a flood of TCP connections that never ask for an association is dropped after
    the ACSE timeout; a real peer gets in right after."""
    limits = DicomLimits(max_associations=3, acse_timeout=1.0)
    _, port = service(DicomAccess([Peer("SCANNER")], limits=limits))
    flood = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    try:
        time.sleep(2.5)
        assoc = _peer().associate("127.0.0.1", port, ae_title="ICHDET")
        assert assoc.is_established and assoc.send_c_echo().Status == SUCCESS
        assoc.release()
    finally:
        for sock in flood:
            sock.close()


def test_a_failing_dispatch_is_restarted_and_reported(service, tmp_path):
    """Item 4: the dispatch raises: /healthz's parts say so, C-STORE of a new study is refused
    instead of answered with success, and once the dispatch runs again the study is processed."""
    ctx, port = service()
    real, calls = ctx.listener.dispatch, []

    def broken(folder):
        calls.append(folder)
        if len(calls) == 1:
            raise RuntimeError("disk gone")
        return real(folder)

    ctx.listener.dispatch = broken
    assoc = _peer().associate("127.0.0.1", port, ae_title="ICHDET")
    for path in ct_study(tmp_path / "a", slices=8):
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == SUCCESS
    _wait(lambda: "dicom-dispatch" in ctx.down())
    other = pydicom.dcmread(ct_study(tmp_path / "b", slices=1, seed=1)[0])
    assert assoc.send_c_store(other).Status == OUT_OF_RESOURCES
    assoc.release()
    _wait(lambda: not ctx.down())  # restarted after its back-off
    _wait(lambda: [(j.status, j.files) for j in _jobs(ctx)] == [("done", 8)])


def test_a_failing_finish_marks_the_study_failed_and_the_worker_goes_on(service, tmp_path):
    """Item 4: store.finish raises: the study is failed with the reason, the worker lives."""
    ctx, port = service()
    real, calls = ctx.store.finish, []

    def broken(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise OSError("database is locked")
        return real(*args, **kwargs)

    ctx.store.finish = broken
    assoc = _peer().associate("127.0.0.1", port, ae_title="ICHDET")
    for folder in ("a", "b"):
        for path in ct_study(tmp_path / folder, slices=8, seed=len(folder)):
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == SUCCESS
        time.sleep(1.0)
    assoc.release()
    _wait(lambda: sorted(j.status for j in _jobs(ctx)) == ["done", "failed"])
    failed = next(j for j in _jobs(ctx) if j.status == "failed")
    assert "database is locked" in failed.reason and not ctx.down()


class Receiver:
    def __init__(self):
        self.port, self.got = free_port(), []
        ae = AE(ae_title="PACS")
        for uid in ("1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"):
            ae.add_supported_context(uid, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"])

        def keep(event):
            self.got.append(event.dataset)
            return SUCCESS

        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, keep)]
        )


def test_late_instances_reprocess_the_whole_study_and_supersede_its_sr(service, tmp_path):
    """Item 5: half a study, a pause longer than the quiet time, the other half: one job, read
    again whole (version 2), and its new SR names the one it replaces; nothing is sent from a
    part of the study without saying so."""
    receiver = Receiver()
    try:
        ctx, port = service(send_to=f"PACS@127.0.0.1:{receiver.port}")
        paths = ct_study(tmp_path / "study", slices=12)
        for version, half in enumerate((paths[:6], paths[6:]), start=1):
            assoc = _peer().associate("127.0.0.1", port, ae_title="ICHDET")
            for path in half:
                assert assoc.send_c_store(pydicom.dcmread(path)).Status == SUCCESS
            assoc.release()
            _wait(lambda v=version: [(j.status, j.version) for j in _jobs(ctx)] == [("done", v)])
            _wait(lambda: any(d.Modality == "SR" for d in receiver.got))
            if version == 1:
                first = next(d for d in receiver.got if d.Modality == "SR")
                receiver.got.clear()
        jobs = _jobs(ctx)
        assert len(jobs) == 1 and jobs[0].version == 2 and jobs[0].files == 12
        second = next(d for d in receiver.got if d.Modality == "SR")
        replaced = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
        assert replaced.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
        assert "v2 (replaces v1" in second.SeriesDescription
    finally:
        receiver.server.shutdown()


def test_outbox_is_written_before_done_and_removed_with_the_study(service, tmp_path):
    """Items 12 and 15: a crash as the study is marked done still leaves its results in the
    outbox; deleting the study removes its outbox entry (patient data) too."""
    ctx, port = service(send_to="PACS@127.0.0.1:9")  # nobody listens: results wait
    ctx.store.finish = lambda *a, **k: (_ for _ in ()).throw(SystemError("killed"))
    assoc = _peer().associate("127.0.0.1", port, ae_title="ICHDET")
    for path in ct_study(tmp_path / "study", slices=8):
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == SUCCESS
    assoc.release()
    _wait(lambda: [j.status for j in _jobs(ctx)] == ["failed"])
    study_id = _jobs(ctx)[0].id
    outbox = tmp_path / "store" / "outbox"
    assert list(outbox.glob(f"{study_id}*/sr_0.dcm"))
    assert ctx.store.mark_deleting(study_id)
    ctx.processor.delete(study_id)
    assert not list(outbox.glob(f"{study_id}*")) and ctx.store.get(study_id) is None
