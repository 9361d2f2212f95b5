"""What series selection and input checks add to a study's prediction, measured in one process.

For each study: ``plan_reads`` alone (series classification from the indexed headers, the image
check on three slices of each candidate, slab planning), the whole warm ``predict()`` (index,
selection, decode, model, CSVs), and the same ``predict()`` without selection (``--series off
--slab off --no-image-check``: every image series read, as ichdet did before selection).
"added" = (predict - unselected) / unselected: for a one-series study, what selection costs
(the image check's decoded slices are reused by the prediction); for the PACS study, what
reading one series instead of all saves (the header index of every file is paid either way).

Studies: a synthetic axial series alone, and a study as a PACS sends it (``ichdet synth
--series``: scout, axial, bone kernel, post-contrast, thin 0.6 mm, dose report), both at 512
px; plus any folder given with --study (the real samples in ../shared, say). Model:
efficientnet_b0 at 256 px, random weights, ONNX Runtime.

    python benchmarks/bench_selection.py [--study DIR ...] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine, random_model

from ichdet.data.index import build_index
from ichdet.inference.export import export_onnx
from ichdet.inference.predict import predict
from ichdet.inference.runners import load_runner
from ichdet.selection.choose import SelectionOptions, plan_reads
from ichdet.synth.studies import synthesize


def onnx_model(root: Path) -> Path:
    return export_onnx([random_model(root)], root / "model.onnx")


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
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runner = load_runner([onnx_model(root)])
        cases = {**studies(root), **{p.name: p for p in args.study}}
        off = SelectionOptions(series="off", slab="off", image_check=False)
        print(f"machine: {machine()}")
        print(
            f"{'study':<22}{'files':>6}{'read':>5}{'plan s':>8}{'predict s':>10}"
            f"{'unselected s':>13}{'added':>7}"
        )
        for name, folder in cases.items():
            index, _, report = build_index(folder)
            options = SelectionOptions(training_mm=runner.slice_spacing)
            plan = plan_reads(index, report["other_objects"], options)
            alone = median_time(
                lambda i=index, r=report, o=options: plan_reads(i, r["other_objects"], o),
                args.repeat,
            )
            predict(runner, folder, root / "out")  # warm up
            chosen = median_time(lambda f=folder: predict(runner, f, root / "out"), args.repeat)
            baseline = median_time(
                lambda f=folder: predict(runner, f, root / "out", selection=off), args.repeat
            )
            files = len(index) + len(report["other_objects"])
            print(
                f"{name:<22}{files:>6}{len(plan.rows):>5}{alone:>8.4f}{chosen:>10.3f}"
                f"{baseline:>13.3f}{(chosen - baseline) / baseline:>7.1%}"
            )


if __name__ == "__main__":
    main()
