"""Shared by the service tests: a tiny exported model and synthetic studies to upload."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pandas as pd

from ichdet.data.cache import CacheSettings
from ichdet.data.index import build_index, write_index
from ichdet.data.prepare import prepare
from ichdet.inference.export import export_onnx
from ichdet.synth.studies import synthesize
from ichdet.training.config import TrainConfig
from ichdet.training.slice_task import fit


def build_model_and_studies(root: Path) -> tuple[Path, dict[str, list[Path]]]:
    """(an ONNX model trained 1 epoch on synthetic data, study UID -> its files in z order)."""
    synthesize(root / "data", studies=6, seed=3, size=48)
    df, errors, report = build_index(root / "data", folds=2)
    index = write_index(df, errors, report, root / "index.parquet")
    prepare(df, root / "cache", CacheSettings(size=32))
    cfg = TrainConfig(
        index=str(index),
        cache=str(root / "cache"),
        out=str(root / "run"),
        model="test_efficientnet",
        size=32,
        epochs=1,
        batch_size=16,
        workers=0,
    )
    fit(cfg, log=lambda s: None)
    model = export_onnx([root / "run"], root / "model.onnx")
    studies = {
        str(study): [Path(s) for s in rows.sort_values("slice_index")["source"]]
        for study, rows in pd.read_parquet(index).groupby("study_id")
    }
    return model, studies


def zip_of(paths: list[Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, path in enumerate(paths):
            zf.write(path, f"dir/{k}.dcm")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ct_study(folder: Path, slices: int = 12, size: int = 48, seed: int = 0) -> list[Path]:
    """A head CT series (an ``ichdet synth`` phantom from the skull base to the vertex) with
    valid DICOM UIDs, as a PACS sends it; files in z order."""
    import numpy as np
    from pydicom.uid import generate_uid

    from ichdet.dicom.write import ct_dataset, save_dataset
    from ichdet.synth.phantom import Grid, plan_study, render_slice, resliced

    rng = np.random.default_rng(seed)
    study, series = generate_uid(), generate_uid()
    plan = resliced(plan_study(rng, size, positive=False), slices)
    grid = Grid.for_plan(plan)
    paths = []
    for k in range(slices):
        hu = render_slice(plan, k, grid)[0]
        ds = ct_dataset(
            (np.rint(hu) + 1024).astype(np.int16),
            position=(0.0, 0.0, plan.slice_z(k)),
            pixel_spacing=(plan.spacing, plan.spacing),
            slice_thickness=plan.thickness,
            study_instance_uid=study,
            series_instance_uid=series,
            instance_number=k + 1,
            patient_id="PAT-1",
        )
        ds.PatientName = "Test^Patient"
        paths.append(save_dataset(ds, folder / f"{k:03d}.dcm"))
    return paths


class LiveServer:
    """``python -m ichdet serve MODEL --store STORE ARGS...`` on a free loopback port (or
    ``port``), stopped by the test. Its log goes to a file: a pipe nobody reads while the test
    runs would fill up with access lines and block the server."""

    def __init__(self, model, store, *args, port=None, env=None):
        import httpx

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="ichdet-serve-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "ichdet", "serve", str(model), "--port", str(self.port)]
        cmd += ["--store", str(store), *map(str, args)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, **(env or {})}
            )
        deadline = time.time() + 60
        while time.time() < deadline and self.proc.poll() is None:
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start: " + self.stop()[-2000:])

    def raw(self, data: bytes) -> socket.socket:
        """A connection that has sent ``data`` (for partial or malformed requests)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.sendall(data)
        return sock

    def stop(self, sig=signal.SIGTERM) -> str:
        """Stop the server (``sig``); returns its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        return self.log.read_text(errors="replace")


def subdural_segmenter(path: Path, size: int = 32) -> Path:
    """A segmenter checkpoint that calls every pixel subdural blood (its output bias set so):
    the segmentation path's plumbing, whatever a trained model would find."""
    import torch

    from ichdet.data.cache import CacheSettings
    from ichdet.labels import SUBTYPES
    from ichdet.models.checkpoint import save_checkpoint
    from ichdet.models.segmenter import KIND, SegmenterConfig, build_segmenter

    config = SegmenterConfig(name="test_efficientnet")
    model = build_segmenter(config)
    head = model.net.segmentation_head[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
        head.bias[SUBTYPES.index("subdural")] = 10.0
    save_checkpoint(
        path,
        {
            "kind": KIND,
            "model": model.state_dict(),
            "model_config": config.to_dict(),
            "cache_settings": CacheSettings(size=size).to_dict(),
            "context": 0,
            "training_data": {"synthetic_only": True},
        },
    )
    return path


ORTHANC = shutil.which("Orthanc")
DICOMWEB_PLUGIN = next(
    (p for p in ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",) if os.path.exists(p)), None
)
#: Orthanc lets a request in only with this bearer token (Lua filter; see Orthanc below)
BEARER_FILTER = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  return httpHeaders['authorization'] == 'Bearer %s'
end
"""


class Orthanc:
    """Debian's Orthanc on loopback ports with a generated configuration; ichdet is a known
    modality (``ichdet_port``); ``dicomweb`` loads the DICOMweb plugin under /dicom-web/;
    ``token``: every HTTP request needs ``Authorization: Bearer TOKEN`` (Orthanc's Lua
    request filter). Stopped by the test."""

    def __init__(self, folder, ichdet_port=None, dicomweb=False, token=None):
        import json

        import httpx

        folder.mkdir(parents=True, exist_ok=True)
        self.http, self.dicom = free_port(), free_port()
        modalities = {"ichdet": ["ICHDET", "127.0.0.1", ichdet_port]} if ichdet_port else {}
        config = {
            "Name": "ichdet-test",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http,
            "DicomPort": self.dicom,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": modalities,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "Plugins": [DICOMWEB_PLUGIN] if dicomweb else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "SaveJobs": False,
        }
        if token:
            (folder / "filter.lua").write_text(BEARER_FILTER % token)
            config["LuaScripts"] = [str(folder / "filter.lua")]
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            [ORTHANC, str(folder / "orthanc.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.http}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, timeout=30, headers=headers)
        for _ in range(200):
            try:
                self.client.get("/system")
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
