"""Do the Grad-CAM heat maps point at the lesions? Hit rate on synthetic masks.

For every positive slice of the test split (synthetic truth) and every subtype present on it,
the Grad-CAM map of that label is computed and its peak mapped back to the slice; a hit is a
peak inside that subtype's mask. For scale, the chance rate: the mask's share of the head.

    python benchmarks/bench_heatmaps.py RUN DATA     # e.g. demo-run/run demo-run/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ichdet.index import build_index, read_long_labels
from ichdet.labels import LABELS, SUBTYPES
from ichdet.predict import _series_inputs
from ichdet.report import HeatMapper, heatmap_peak
from ichdet.runners import load_runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("data", type=Path, help="synthetic data written with --masks")
    parser.add_argument("--limit", type=int, default=400, help="positive slices at most")
    args = parser.parse_args()
    runner = load_runner([args.run])
    mapper = HeatMapper(runner.models[0])
    truth, _ = read_long_labels((args.data / "stage_2_test_labels.csv").read_text())
    index, _, _ = build_index(args.data / "stage_2_test")
    index = index.assign(kind="dicom")
    positive = set(truth.index[truth["any"] == 1][: args.limit])
    hits: dict[str, list[bool]] = {name: [] for name in SUBTYPES}
    chance: dict[str, list[float]] = {name: [] for name in SUBTYPES}
    for _, series in index.groupby("series_id", sort=False):
        if not positive & set(series["image_id"]):
            continue
        rows = list(series[["image_id", "source", "kind"]].itertuples(index=False, name=None))
        ids, volume, _ = _series_inputs(rows, runner.spec.settings, runner.spec.context)
        head = volume[:, 0] > 0  # brain-window channel: zero outside the head's soft tissue
        for i, image_id in enumerate(ids):
            if image_id not in positive:
                continue
            with np.load(args.data / "masks" / f"{image_id}.npz") as masks:
                for name in masks.files:
                    mask = masks[name]
                    cam = mapper(volume[i], LABELS.index(name))
                    r, c = heatmap_peak(cam, mask.shape)
                    hits[name].append(bool(mask[r, c]))
                    area = head[i].mean() * mask.size
                    chance[name].append(float(mask.sum() / max(area, 1)))
    rows = [
        {
            "label": n,
            "slices": len(hits[n]),
            "hit_rate": np.mean(hits[n]) if hits[n] else np.nan,
            "chance": np.mean(chance[n]) if chance[n] else np.nan,
        }
        for n in SUBTYPES
    ]
    everything = sum(hits.values(), [])
    rows.append(
        {
            "label": "all",
            "slices": len(everything),
            "hit_rate": np.mean(everything),
            "chance": np.mean(sum(chance.values(), [])),
        }
    )
    print(f"model: {runner.names[0]}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"ratio {rows[-1]['hit_rate'] / rows[-1]['chance']:.1f} (hit rate / chance)")


if __name__ == "__main__":
    main()
