"""Does the phantom-trained demo model transfer to real CT? The real studies in
``../shared/real-sample`` (an RSNA study with a large intraparenchymal bleed on its middle
slices, and a CQ500 scan read as epidural + subarachnoid): p(any) per study from the demo model
(CNN and series stage), its per-slice profile along z, and the HU rule
(``ichdet.evaluation.hu_rule``: the largest 55-90 HU blob inside the skull, 5 mm from bone) on
the same slices.

    python benchmarks/bench_transfer.py [--model demo-run/run] [--data ../shared/real-sample]
    python benchmarks/bench_transfer.py --rule-on SYNTH   # the HU rule's study AUC on the
                                                          # test split of an `ichdet synth` set

Both real studies are positive: this shows saturation (every slice ~1) or its absence and
whether the profile follows the bleed, not an AUC. Do not tune on it (see README).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import machine

from ichdet.dicom.read import read_meta, read_slice
from ichdet.evaluation.hu_rule import score_volume
from ichdet.inference.predict import predict
from ichdet.inference.runners import load_runner


def _series(folder: Path) -> tuple[list[Path], float, float]:
    """The study's files in z order, pixel spacing and slice spacing (from positions)."""
    metas = sorted(((read_meta(p), p) for p in folder.glob("*.dcm")), key=lambda t: t[0].z)
    z = np.array([m.z for m, _ in metas])
    spacing = metas[0][0].pixel_spacing or (1.0, 1.0)
    step = float(np.median(np.diff(z))) if len(z) > 1 else 5.0
    return [p for _, p in metas], float(spacing[0]), step


def _profile(values: np.ndarray) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def run(model: Path, data: Path) -> None:
    print(f"machine: {machine()}")
    runner = load_runner([model])
    for folder in sorted(p for p in data.iterdir() if p.is_dir() and any(p.glob("*.dcm"))):
        files, spacing, step = _series(folder)
        with tempfile.TemporaryDirectory() as tmp:
            result = predict(runner, folder, Path(tmp) / "out")
        slices = result.slices.sort_values("z")
        study_any = float(result.studies["any"].iloc[0])
        rule = score_volume([read_slice(p).hu for p in files], spacing, step)
        print(f"\n{folder.name}: {len(files)} slices, {spacing:.2f} mm pixels, {step:.2f} mm apart")
        print(f"  study p(any): {study_any:.4f} (series stage)")
        if "cnn_any" in slices:
            cnn = slices["cnn_any"].to_numpy()
            print(f"  CNN p(any) per slice: max {cnn.max():.4f}, median {np.median(cnn):.4f}")
            print(f"  CNN p(any) along z (bottom to top): {_profile(cnn)}")
        print(f"  series stage p(any) along z: {_profile(slices['any'].to_numpy())}")
        print(f"  HU rule: largest blob {rule.volume_ml:.1f} mL")
        print(f"  HU rule candidate area along z (cm2): {_profile(rule.slice_area_mm2 / 100)}")


def rule_auc(synth: Path) -> None:
    """The HU rule's study AUC(any) on the test split of a synthetic set (its truth is known)."""
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    truth = pd.read_csv(synth / "stage_2_test_labels.csv")
    truth = truth[truth["ID"].str.endswith("_any")]
    positive = dict(zip(truth["ID"].str[: -len("_any")], truth["Label"], strict=True))
    studies: dict[str, list[tuple[float, Path]]] = {}
    for path in (synth / "stage_2_test").glob("*.dcm"):
        meta = read_meta(path)
        studies.setdefault(meta.study_instance_uid, []).append((meta.z, path))
    labels, scores = [], []
    for slices in studies.values():
        files = [p for _, p in sorted(slices)]
        z = [z for z, _ in sorted(slices)]
        spacing = read_meta(files[0]).pixel_spacing or (1.0, 1.0)
        step = float(np.median(np.diff(z))) if len(z) > 1 else 5.0
        rule = score_volume([read_slice(p).hu for p in files], float(spacing[0]), step)
        labels.append(max(positive[p.stem] for p in files))
        scores.append(rule.volume_ml)
    print(
        f"HU rule on {synth}: {len(labels)} test studies, {sum(labels)} with hemorrhage, "
        f"study AUC(any) {roc_auc_score(labels, scores):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo-run/run")
    parser.add_argument("--data", default=str(Path(__file__).parents[1] / "../shared/real-sample"))
    parser.add_argument("--rule-on", help="an `ichdet synth` folder: the HU rule's study AUC")
    args = parser.parse_args()
    if args.rule_on:
        rule_auc(Path(args.rule_on))
        return
    data = Path(args.data)
    if not data.is_dir():
        sys.exit(f"no real sample at {data}: this benchmark needs ../shared/real-sample")
    run(Path(args.model), data)


if __name__ == "__main__":
    main()
