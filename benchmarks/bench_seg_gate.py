"""The segmentation gate's trade-off: blood-free series given blood vs bleeds missed.

Takes the output of ``ichdet predict MODEL DATA --out OUT --segmenter SEG --seg-gate 0`` (every
mask kept) and the index with the true masks, re-gates the masks with the detector's slice
p(any) from OUT/slices.csv at several gates, and scores each with ``ichdet evaluate --masks``'s
function: series with blood missed, blood-free series given some, Dice(any), volume agreement.

    python benchmarks/bench_seg_gate.py OUT INDEX [--gates 0,0.05,0.1,0.2,0.3,0.5]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from ichdet.data.masks import read_series_masks, write_series_masks
from ichdet.evaluation.mask_eval import evaluate_masks


def regated(out: Path, gate: float, folder: Path) -> Path:
    """OUT's masks with the slices under ``gate`` emptied, written under ``folder/masks``."""
    p_any = pd.read_csv(out / "slices.csv", dtype={"image_id": str}).set_index("image_id")["any"]
    for path in (out / "masks").glob("*.npz"):
        ids, z, masks, pixel = read_series_masks(path)
        keep = p_any.reindex(ids).fillna(1.0).to_numpy() >= gate
        write_series_masks(
            folder / "masks" / path.name, ids, z, masks & keep[:, None, None, None], pixel
        )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="predict's output, made with --seg-gate 0")
    parser.add_argument("index", type=Path, help="the index with the true masks")
    parser.add_argument("--gates", default="0,0.05,0.1,0.2,0.3,0.5")
    args = parser.parse_args()
    print(
        f"{'gate':>5} {'blood-free given blood':>23} {'bleeds missed':>14} "
        f"{'Dice(any) pooled':>17} {'CCC':>6} {'bias mL':>8}"
    )
    for gate in (float(g) for g in args.gates.split(",")):
        folder = Path(tempfile.mkdtemp())
        try:
            summary, _, _ = evaluate_masks(regated(args.out, gate, folder), args.index)
        finally:
            shutil.rmtree(folder)
        found = summary["labels"]["any"]
        negatives = summary["series"] - found["series_with_blood"]
        print(
            f"{gate:>5.2f} {found['false_found']:>15} of {negatives:<5}"
            f"{found['missed']:>6} of {found['series_with_blood']:<5}"
            f"{found['dice_pooled']:>17.3f} {found['volume']['ccc']:>6.3f} "
            f"{found['volume']['bias']:>+8.2f}"
        )


if __name__ == "__main__":
    main()
