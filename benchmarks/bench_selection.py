"""What series selection and input checks add to a study's prediction, measured in one process.

For each study: the whole warm ``predict()`` (index of the headers, selection, decode, model,
CSVs) and, within it, ``plan_reads`` alone (series classification from the indexed headers, the
image check on three slices of each candidate, slab planning). Studies: a 40-slice axial series
alone, and a study as a PACS sends it (``ichdet synth --series``: scout, axial, bone kernel,
post-contrast, thin 0.6 mm, dose report), both at 512 px; plus any folder given with --study
(the real samples in ../shared, say). Model: efficientnet_b0 at 256 px, random weights, ONNX.

    python benchmarks/bench_selection.py [--study DIR ...] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine

from ichdet.data.cache import CacheSettings
from ichdet.data.index import build_index
from ichdet.inference.export import export_onnx
from ichdet.inference.predict import predict
from ichdet.inference.runners import load_runner
from ichdet.models.checkpoint import save_checkpoint
from ichdet.models.slice_cnn import ModelConfig, build_model
from ichdet.selection.choose import SelectionOptions, plan_reads
from ichdet.synth.studies import synthesize


def onnx_model(root: Path) -> Path:
    config = ModelConfig(name="efficientnet_b0", in_chans=3)
    ckpt = root / "model.pt"
    save_checkpoint(
        ckpt,
        {
            "kind": "slice_cnn",
            "model": build_model(config).state_dict(),
            "model_config": config.to_dict(),
            "context": 0,
            "cache_settings": CacheSettings(size=256).to_dict(),
        },
    )
    return export_onnx([ckpt], root / "model.onnx")


def studies(root: Path) -> dict[str, Path]:
    plain, pacs = root / "plain", root / "pacs"
    synthesize(plain, studies=1, seed=2, size=512, test_fraction=0.0)
    series = ("localizer", "bone", "contrast", "thin", "dose-sr")
    synthesize(pacs, studies=1, seed=2, size=512, test_fraction=0.0, series=series)
    return {"axial series alone": plain / "stage_2_train", "PACS study": pacs / "stage_2_train"}


def median_time(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", type=Path, action="append", default=[])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runner = load_runner([onnx_model(root)])
        cases = {**studies(root), **{p.name: p for p in args.study}}
        print(f"machine: {machine()}")
        print(f"{'study':<28}{'files':>6}{'read':>6}{'predict s':>11}{'selection s':>13}{'share':>8}")
        for name, folder in cases.items():
            index, _, report = build_index(folder)
            options = SelectionOptions(training_mm=runner.slice_spacing)
            plan = plan_reads(index, report["other_objects"], options)
            predict(runner, folder, root / "out")  # warm up
            total = median_time(lambda f=folder: predict(runner, f, root / "out"), args.repeat)
            selection = median_time(
                lambda i=index, r=report: plan_reads(i, r["other_objects"], options), args.repeat
            )
            files = len(index) + len(report["other_objects"])
            print(
                f"{name:<28}{files:>6}{len(plan.rows):>6}{total:>11.3f}{selection:>13.4f}"
                f"{selection / total:>8.1%}"
            )


if __name__ == "__main__":
    main()
