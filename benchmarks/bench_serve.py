"""``ichdet serve`` under load on the loopback interface, against ``ichdet predict`` on the same
study, in one run on this machine.

- a 40-slice study, warm server: from the upload's answer to the result (median of 5), next to
  a whole ``ichdet predict MODEL STUDY`` command on the same files (ratio);
- 20 concurrent uploads of different studies: p50 and p95 upload-to-result latency, studies per
  minute at saturation, and the server process's peak memory (VmHWM).

    python benchmarks/bench_serve.py MODEL.onnx DATA   # DATA: e.g. demo-run/data (ichdet synth)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd

from ichdet.data.index import build_index

SLICES = 40


def start(model: Path, store: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ichdet", "serve", str(model), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--store", str(store)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(600):
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def upload_and_wait(url: str, paths: list[Path], poll: float = 0.01) -> float:
    """Seconds from the upload's 202 answer to the result being available (polled)."""
    files = [("files", ("upload", p.read_bytes(), "application/dicom")) for p in paths]
    study_id = httpx.post(url + "/api/v1/studies", files=files, timeout=300).json()["id"]
    answered = time.perf_counter()
    while True:
        status = httpx.get(f"{url}/api/v1/studies/{study_id}", timeout=30).json()["status"]
        if status in ("done", "failed"):
            if status == "failed":
                raise RuntimeError(f"study {study_id} failed")
            return time.perf_counter() - answered
        time.sleep(poll)


def peak_memory_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--concurrent", type=int, default=20)
    args = parser.parse_args()
    index, _, _ = build_index(args.data)
    series = [
        [Path(s) for s in g.sort_values("slice_index")["source"]]
        for _, g in index.groupby("study_id")
    ]
    forty = next(s for s in series if len(s) >= SLICES)[:SLICES]
    url = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as tmp:
        study_dir = Path(tmp) / "study"
        study_dir.mkdir()
        for p in forty:
            shutil.copy(p, study_dir / p.name)
        started = time.perf_counter()
        cli = [sys.executable, "-m", "ichdet", "predict", str(args.model), str(study_dir)]
        subprocess.run([*cli, "-o", str(Path(tmp) / "pred")], check=True, capture_output=True)
        command = time.perf_counter() - started
        proc = start(args.model, Path(tmp) / "store", args.port)
        try:
            upload_and_wait(url, forty)  # warm-up
            warm = statistics.median(upload_and_wait(url, forty) for _ in range(5))
            print(
                f"{SLICES}-slice study: warm server {warm:.2f} s from upload to result; "
                f"`ichdet predict` command {command:.2f} s; ratio {command / warm:.1f}x"
            )
            studies = (series * (args.concurrent // len(series) + 1))[: args.concurrent]
            slices = sum(len(s) for s in studies)
            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrent) as pool:
                # 20 clients polling every 10 ms would be a load of their own: 100 ms here
                latencies = sorted(pool.map(lambda s: upload_and_wait(url, s, 0.1), studies))
            wall = time.perf_counter() - started
            q = pd.Series(latencies).quantile([0.5, 0.95])
            print(
                f"{args.concurrent} concurrent uploads ({slices} slices): all done in "
                f"{wall:.1f} s; upload-to-result p50 {q[0.5]:.1f} s, p95 {q[0.95]:.1f} s; "
                f"{60 * args.concurrent / wall:.1f} studies/min at saturation; "
                f"server peak memory {peak_memory_mib(proc.pid):.0f} MiB"
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
