"""The seed write-up's preprocessing as a command: every DICOM under DATA -> a PNG under OUT.

Per file: pydicom dcmread, HU from the modality rescale, the write-up's three windows (values
outside the window to its bottom, per-image min-max), PIL bilinear resize, PNG write. The
baseline that ``bench_prepare.py`` runs ``ichdet prepare`` against.

    python benchmarks/seed_prepare.py DATA OUT [--size 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

WINDOWS = ((40, 80), (80, 200), (600, 2000))  # brain, subdural, bone


def blackout_minmax(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    low, high = center - width / 2, center + width / 2
    img = hu.copy()
    img[(img < low) | (img > high)] = low
    lo, hi = img.min(), img.max()
    return np.zeros_like(img) if hi <= lo else (img - lo) / (hi - lo)


def seed_style(sources: list[Path], out: Path, size: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for src in sources:
        ds = pydicom.dcmread(src)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        rgb = np.stack([blackout_minmax(hu, c, w) for c, w in WINDOWS], axis=-1)
        image = Image.fromarray((rgb * 255).astype(np.uint8))
        image.resize((size, size), Image.Resampling.BILINEAR).save(out / (src.stem + ".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    seed_style(sorted(args.data.rglob("*.dcm")), args.out, args.size)


if __name__ == "__main__":
    main()
