"""Do the heat maps point at the lesions? Hit rate on synthetic masks, side by side.

For every positive slice of the test split (synthetic truth) and every subtype present on it,
the heat map of that label is computed and its peak mapped back to the slice; a hit is a peak
inside that subtype's mask. Compared: ichdet's heat maps (LayerCAM on the last stride-8
convolution), plain Grad-CAM on the last convolution, and chance (the mask's share of the head).

    python benchmarks/bench_heatmaps.py RUN DATA     # e.g. demo-run/run demo-run/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from ichdet.data.index import build_index, read_long_labels
from ichdet.inference.decode import series_inputs
from ichdet.inference.runners import load_runner
from ichdet.labels import LABELS, SUBTYPES
from ichdet.reports.heatmaps import HeatMapper, heatmap_peak


def positive_cases(
    runner, data: Path, limit: int
) -> list[tuple[np.ndarray, str, np.ndarray, float]]:
    """(model input, subtype, mask, chance) for the positive test slices."""
    truth, _ = read_long_labels((data / "stage_2_test_labels.csv").read_text())
    index, _, _ = build_index(data / "stage_2_test")
    index = index.assign(kind="dicom")
    positive = set(truth.index[truth["any"] == 1][:limit])
    cases = []
    for _, series in index.groupby("series_id", sort=False):
        if not positive & set(series["image_id"]):
            continue
        rows = list(series[["image_id", "source", "kind"]].itertuples(index=False, name=None))
        ids, volume, _ = series_inputs(rows, runner.spec.settings, runner.spec.context)
        for i, image_id in enumerate(ids):
            if image_id not in positive:
                continue
            head_share = float((volume[i, 0] > 0).mean())  # brain window > 0: inside the head
            with np.load(data / "masks" / f"{image_id}.npz") as masks:
                for name in masks.files:
                    chance = masks[name].mean() / max(head_share, 1e-6)
                    cases.append((volume[i], name, masks[name], chance))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("data", type=Path, help="synthetic data written with --masks")
    parser.add_argument("--limit", type=int, default=400, help="positive slices at most")
    args = parser.parse_args()
    runner = load_runner([args.run])
    model = runner.models[0]
    ours = HeatMapper(model, runner.spec.channels, runner.spec.settings.size)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    plain = GradCAM(model=model, target_layers=[last])

    def gradcam(x: np.ndarray, label: int) -> np.ndarray:
        tensor = torch.from_numpy(x[None]).float().div_(255)
        return plain(input_tensor=tensor, targets=[ClassifierOutputTarget(label)])[0]

    cases = positive_cases(runner, args.data, args.limit)
    rows = []
    for name in [*SUBTYPES, "all"]:
        chosen = [c for c in cases if name in ("all", c[1])]
        if not chosen:
            continue
        row = {"label": name, "cases": len(chosen)}
        for method, fn in (("layercam_s8", ours), ("gradcam_last", gradcam)):
            hits = [
                bool(mask[heatmap_peak(fn(x, LABELS.index(sub)), mask.shape)])
                for x, sub, mask, _ in chosen
            ]
            row[method] = float(np.mean(hits))
        row["chance"] = float(np.mean([c[3] for c in chosen]))
        rows.append(row)
    table = pd.DataFrame(rows)
    print(f"model: {runner.names[0]}, input {runner.spec.settings.size} px")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    total = table.iloc[-1]
    print(
        f"ratio {total['layercam_s8'] / total['chance']:.1f} (LayerCAM hit rate / chance); "
        f"LayerCAM {total['layercam_s8']:.3f} vs Grad-CAM {total['gradcam_last']:.3f}"
    )


if __name__ == "__main__":
    main()
