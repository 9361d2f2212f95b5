"""A learning-free baseline: the largest blob of fresh-blood density inside the skull.

On each slice the skull is the bone (> 300 HU); what it encloses (holes filled) is the cranial
cavity, trimmed to the pixels at least 5 mm from any bone (the skull base, the tables and the
partial volume next to them are where most false densities lie). Blood candidates are the
pixels of that trimmed cavity whose 3 x 3 median lies in 55-90 HU; the candidates of all slices
form 3D blobs (connected in z across neighbouring slices), and the study's score is the volume
(mL) of the largest. No training, no tuning on labelled data: a floor that a model trained on
any data should beat (``benchmarks/bench_transfer.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

BONE_HU = 300.0
BLOOD_HU = (55.0, 90.0)
BONE_MARGIN_MM = 5.0


@dataclass(frozen=True)
class RuleResult:
    volume_ml: float  # the largest blob's volume: the study's score
    slice_area_mm2: np.ndarray  # candidate area per slice, in the order given (a z profile)


def candidates(hu: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Blood-density pixels of one slice inside the skull, >= 5 mm from bone."""
    bone = (hu > BONE_HU).astype(np.uint8)
    enclosed = ndimage.binary_fill_holes(bone) & ~bone.astype(bool)
    if not enclosed.any():
        return enclosed
    away = cv2.distanceTransform((1 - bone).astype(np.uint8), cv2.DIST_L2, 5) * spacing_mm
    smooth = cv2.medianBlur(np.clip(hu, -1024, 3071).astype(np.float32), 3)
    blood = (smooth >= BLOOD_HU[0]) & (smooth <= BLOOD_HU[1])
    return enclosed & (away >= BONE_MARGIN_MM) & blood


def score_volume(
    slices: list[np.ndarray], spacing_mm: float, slice_spacing_mm: float
) -> RuleResult:
    """The rule over one series (HU images in z order, one pixel spacing)."""
    if not slices:
        return RuleResult(0.0, np.zeros(0))
    stack = np.stack([candidates(hu, spacing_mm) for hu in slices])
    area = stack.reshape(len(stack), -1).sum(axis=1) * spacing_mm**2
    labels, count = ndimage.label(stack)
    if count == 0:
        return RuleResult(0.0, area)
    largest = int(np.bincount(labels.ravel())[1:].max())
    return RuleResult(largest * spacing_mm**2 * slice_spacing_mm / 1000.0, area)
