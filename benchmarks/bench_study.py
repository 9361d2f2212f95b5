"""End-to-end latency of one 40-slice study (DICOM files -> slices.csv), cold and warm.

Model: efficientnet_b0 at 256 px (3 windows), random weights (latency does not depend on them),
as an ichdet checkpoint and as its ONNX export. Cold: a fresh `ichdet predict` process (Python
start, imports, model load, decode, inference, CSVs). Warm: a second `predict()` call in a
process that already holds the model.

    python benchmarks/bench_study.py [--slices 40] [--model efficientnet_b0] [--size 256]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine, random_model

from ichdet.dicom.write import ct_dataset, save_dataset
from ichdet.inference.export import export_onnx
from ichdet.inference.predict import predict
from ichdet.inference.runners import load_runner
from ichdet.synth.phantom import Grid, plan_study, render_slice, resliced


def write_study(folder: Path, slices: int) -> None:
    rng = np.random.default_rng(0)
    plan = resliced(plan_study(rng, 512, positive=True), slices)
    grid = Grid.for_plan(plan)
    for k in range(slices):
        hu, _ = render_slice(plan, k, grid)
        stored = (np.rint(hu) + 1024).astype(np.int16)
        save_dataset(
            ct_dataset(
                stored,
                position=(0, 0, plan.slice_z(k)),
                instance_number=k + 1,
                study_instance_uid="1.2.3",
                series_instance_uid="1.2.3.4",
            ),
            folder / f"slice{k:03d}.dcm",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_study(root / "study", args.slices)
        ckpt = random_model(root, args.model, args.size)
        onnx = export_onnx([ckpt], root / "model.onnx")
        print(f"machine: {machine()}")
        print(f"{args.slices}-slice study, 512 px DICOMs, {args.model} at {args.size} px")
        print(f"{'model':<8}{'cold s':>9}{'warm s':>9}{'warm slices/s':>15}")
        results = {}
        for name, model in (("torch", ckpt), ("onnx", onnx)):
            start = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ichdet",
                    "predict",
                    str(model),
                    str(root / "study"),
                    "--out",
                    str(root / f"cold_{name}"),
                ],
                check=True,
                capture_output=True,
            )
            cold = time.perf_counter() - start
            runner = load_runner([model])
            predict(runner, root / "study", root / f"warm_{name}")  # warm-up
            start = time.perf_counter()
            result = predict(runner, root / "study", root / f"warm_{name}")
            warm = time.perf_counter() - start
            assert len(result.slices) == args.slices
            results[name] = (cold, warm)
            print(f"{name:<8}{cold:>9.2f}{warm:>9.2f}{args.slices / warm:>15.1f}")
        print(
            f"ratio cold torch/onnx {results['torch'][0] / results['onnx'][0]:.2f}, "
            f"warm torch/onnx {results['torch'][1] / results['onnx'][1]:.2f}"
        )


if __name__ == "__main__":
    main()
