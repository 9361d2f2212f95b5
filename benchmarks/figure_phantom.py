"""The figure of one synthetic study in the README and RESULTS.md: every tenth slice of a
60-slice whole-head phantom (``ichdet synth``), brain window (40/80) above and bone window
(600/2000) below, the hemorrhage masks outlined in red.

    python benchmarks/figure_phantom.py [--seed 23] [--out docs/phantom.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from ichdet.synth.phantom import Grid, plan_study, render_slice, resliced

TILE = 256


def _window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    img = np.clip((hu - (center - width / 2)) / width, 0, 1) * 255
    img = cv2.resize(img.astype(np.uint8), (TILE, TILE), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)


def _outline(img: np.ndarray, masks: dict[str, np.ndarray]) -> None:
    for mask in masks.values():
        small = cv2.resize(mask.astype(np.uint8), (TILE, TILE), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(img, contours, -1, (0, 0, 255), 1)


def figure(seed: int, out: Path) -> str:
    plan = resliced(plan_study(np.random.default_rng(seed), 384, positive=True), 60)
    grid = Grid.for_plan(plan)
    brain, bone = [], []
    for k in range(0, plan.n_slices, 10):
        hu, masks = render_slice(plan, k, grid)
        top, bottom = _window(hu, 40, 80), _window(hu, 600, 2000)
        _outline(top, masks)
        label = f"z {plan.slice_z(k):+.0f} mm {' '.join(n[:3] for n in masks)}"
        cv2.putText(top, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 0), 1)
        brain.append(top)
        bone.append(bottom)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), np.vstack([np.hstack(brain), np.hstack(bone)]))
    lesions = ", ".join(
        f"{x.subtype} ({x.site + ', ' if x.site else ''}{x.age}, {x.hu:.0f} HU)"
        for x in plan.lesions
    )
    study = f"{plan.n_slices} slices of {plan.thickness:.1f} mm, age {plan.head.age:.0f}"
    return f"seed {seed}: {study}, {lesions}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--out", default="docs/phantom.png")
    args = parser.parse_args()
    print(figure(args.seed, Path(args.out)))


if __name__ == "__main__":
    main()
