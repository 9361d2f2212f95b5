"""Shared fixtures: synthetic CT DICOMs written with pydicom, and compressed copies made by GDCM."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ichdet.dicom.write import ct_dataset, save_dataset

# Ray instances started by tests (tests/test_ray.py) bind their servers to loopback only: Ray
# takes the node's address from this setting when its module is first imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # tests reach no network

SHARED_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "real-sample"


@pytest.fixture
def write_ct(tmp_path):
    """``write_ct(name, stored, **ct_dataset_kwargs) -> Path`` of a CT file under tmp_path."""

    def _write(name: str, stored: np.ndarray, **kwargs) -> Path:
        return save_dataset(ct_dataset(stored, **kwargs), tmp_path / name)

    return _write


@pytest.fixture
def hu_image() -> np.ndarray:
    """A 64x64 int32 HU test image: air, soft tissue, blood, bone, and a ramp over [-1000, 3000]."""
    rng = np.random.default_rng(0)
    img = rng.integers(-1000, 3000, size=(64, 64)).astype(np.int32)
    img[:8] = -1000
    img[8:16, :] = 40
    img[16:20, :] = 70
    img[20:24, :] = 1500
    return img


def transcode(src: Path, dst: Path, syntax: str) -> Path:
    """Re-encode a DICOM file with GDCM: ``syntax`` in jpeg-lossless, jpeg-ls, j2k."""
    import gdcm

    codes = {
        "jpeg-lossless": gdcm.TransferSyntax.JPEGLosslessProcess14_1,
        "jpeg-ls": gdcm.TransferSyntax.JPEGLSLossless,
        "j2k": gdcm.TransferSyntax.JPEG2000Lossless,
    }
    reader = gdcm.ImageReader()
    reader.SetFileName(os.fspath(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(codes[syntax]))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(os.fspath(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return dst
