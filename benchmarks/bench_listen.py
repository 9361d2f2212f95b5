"""``ichdet listen`` with Orthanc (Debian's package) as the PACS, in one run on this machine.

- a 40-slice study sent to the listener: from the last instance's C-STORE answer to the SR
  stored in Orthanc, minus the quiet time (median of 3 warm runs);
- C-STORE receive rate, instances per second, uncompressed vs JPEG Lossless (one association,
  the same 200 instances), and their ratio.

Instances are copies of ``ichdet synth`` slices (512 px) given fresh, valid UIDs.

    python benchmarks/bench_listen.py MODEL.onnx   # Orthanc must be installed
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import transcode  # noqa: E402
from serve_fixtures import free_port  # noqa: E402

from ichdet.inference.runners import load_runner  # noqa: E402
from ichdet.serve.context import Context, Settings  # noqa: E402
from ichdet.synth.studies import synthesize  # noqa: E402

QUIET = 1.0


def study(data: Path, slices: int) -> list[pydicom.Dataset]:
    """``slices`` slices of one synthetic study with new, valid UIDs (as a PACS holds them)."""
    files = sorted((data / "stage_2_train").glob("*.dcm"))
    by_study: dict[str, list[pydicom.Dataset]] = {}
    for f in files:
        ds = pydicom.dcmread(f)
        by_study.setdefault(ds.StudyInstanceUID, []).append(ds)
    chosen = max(by_study.values(), key=len)[:slices]
    uids = {"study": generate_uid(), "series": generate_uid()}
    for ds in chosen:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return chosen


def send(datasets: list[pydicom.Dataset], port: int, syntax: str) -> float:
    """C-STORE ``datasets`` on one association; returns when the last answer came."""
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(CTImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="ICHDET")
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0
    done = time.perf_counter()
    assoc.release()
    return done


def orthanc(folder: Path, listener_port: int) -> tuple[subprocess.Popen, httpx.Client, int]:
    http, dicom = free_port(), free_port()
    config = {
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": http,
        "DicomPort": dicom,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": {"ichdet": ["ICHDET", "127.0.0.1", listener_port]},
        "DicomAlwaysAllowStore": True,
        "Plugins": [],
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    binary = shutil.which("Orthanc") or "Orthanc"
    proc = subprocess.Popen([binary, str(folder / "orthanc.json")], stderr=subprocess.DEVNULL)
    client = httpx.Client(base_url=f"http://127.0.0.1:{http}", timeout=30)
    for _ in range(200):
        try:
            client.get("/system")
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    return proc, client, dicom


def sr_arrival(client: httpx.Client, study_uid: str, timeout: float = 120) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = client.post(
            "/tools/find",
            json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}},
        ).json()
        if found:
            return time.perf_counter()
        time.sleep(0.02)
    raise RuntimeError("no SR arrived")


def jpeg_lossless(ds: pydicom.Dataset, root: Path) -> pydicom.Dataset:
    """The dataset re-encoded as JPEG Lossless by GDCM."""
    plain, packed = root / "plain.dcm", root / "packed.dcm"
    ds.save_as(plain, enforce_file_format=True)
    transcode(plain, packed, "jpeg-lossless")
    return pydicom.dcmread(packed)


def idle(ctx: Context, timeout: float = 300) -> None:
    """Wait until no study is waiting or running and the outbox is empty (no contention)."""
    deadline = time.time() + timeout
    time.sleep(QUIET + 0.5)
    while time.time() < deadline:
        busy = ctx.store.count("queued") + ctx.store.count("running")
        if not busy and not (ctx.outbox and ctx.outbox.pending()):
            return
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    args = parser.parse_args()
    runner = load_runner([args.model])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synthesize(root / "data", studies=6, seed=5, size=512, workers=2)
        port = free_port()
        proc, client, orthanc_port = orthanc(root, port)
        settings = Settings(
            store=root / "store",
            dicom_port=port,
            quiet_seconds=QUIET,
            send_to=f"ORTHANC@127.0.0.1:{orthanc_port}",
        )
        ctx = Context(runner, settings)
        ctx.start()
        try:
            latencies = []
            for _ in range(4):  # the first one warms up
                datasets = study(root / "data", 40)
                last = send(datasets, port, ExplicitVRLittleEndian)
                latencies.append(sr_arrival(client, datasets[0].StudyInstanceUID) - last - QUIET)
            warm = statistics.median(latencies[1:])
            print(
                f"40-slice study: last instance received -> SR in Orthanc, minus the "
                f"{QUIET:.0f} s quiet time: {warm:.2f} s warm (first {latencies[0]:.2f} s)"
            )
            rates = {}
            for name, syntax in (
                ("uncompressed", ExplicitVRLittleEndian),
                ("JPEG Lossless", JPEGLosslessSV1),
            ):
                batch = [ds for _ in range(5) for ds in study(root / "data", 40)]
                if syntax != ExplicitVRLittleEndian:
                    batch = [jpeg_lossless(ds, root) for ds in batch]
                idle(ctx)
                started = time.perf_counter()
                send(batch, port, syntax)
                rates[name] = len(batch) / (time.perf_counter() - started)
                print(f"C-STORE {name}: {rates[name]:.0f} instances/s ({len(batch)} instances)")
            ratio = rates["uncompressed"] / rates["JPEG Lossless"]
            print(f"ratio uncompressed / JPEG Lossless: {ratio:.2f}x")
        finally:
            ctx.stop()
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
