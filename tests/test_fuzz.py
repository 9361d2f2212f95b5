"""Fuzzing the reader: damaged bytes of real-looking CT files end as a slice or a DicomError.

Hypothesis mutates synthetic DICOMs (explicit and implicit VR, RLE-compressed): overwritten
bytes (header values, lengths, tags), truncation, inserted bytes. Whatever comes back must be
a correct-looking slice (float32 HU of the header's size, no larger than the pixel cap) or a
DicomError; any other exception is a bug. The example count is bounded for ``make test``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from ichdet.dicom.read import DicomError, read_hu, read_meta, read_slice
from ichdet.dicom.write import ct_dataset
from ichdet.util.limits import limits


def _encoded(syntax: str | None) -> bytes:
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 2000, (32, 32)).astype(np.int16)
    ds = ct_dataset(stored, sop_instance_uid="1.2.3.4", study_instance_uid="1.2.3")
    buf = io.BytesIO()
    if syntax == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom")
        ds.save_as(buf, enforce_file_format=True)
    elif syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(buf, implicit_vr=True, little_endian=True, enforce_file_format=True)
    else:
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


SEEDS = {
    name: _encoded(syntax)
    for name, syntax in (
        ("explicit", None),
        ("implicit", ImplicitVRLittleEndian),
        ("rle", RLELossless),
    )
}


@st.composite
def damaged(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 8))):  # overwrite bytes, mostly in the header
        end = 400 if draw(st.booleans()) else len(data)
        position = draw(st.integers(0, min(end, len(data)) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):  # lengths and tags: write a 32-bit value somewhere in the header
        position = draw(st.integers(128, 380))
        data[position : position + 4] = draw(st.binary(min_size=4, max_size=4))
    if draw(st.booleans()):
        data.insert(draw(st.integers(0, len(data))), draw(st.integers(0, 255)))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def _check(result) -> None:
    hu = result.hu if hasattr(result, "hu") else result
    assert hu.dtype == np.float32 and hu.ndim == 2
    assert hu.size <= limits().max_pixels
    if hasattr(result, "meta"):
        assert hu.shape == (result.meta.rows, result.meta.columns)


@pytest.mark.parametrize("read", [read_slice, read_hu], ids=["read_slice", "read_hu"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=damaged())
def test_damaged_files_read_or_raise_dicom_error(read, data):
    try:
        result = read(data)
    except DicomError as exc:
        assert exc.reason and exc.source == "<bytes>"
        return
    _check(result)


@settings(max_examples=150, deadline=None)
@given(data=damaged())
def test_damaged_headers_read_or_raise_dicom_error(data):
    try:
        meta = read_meta(io.BytesIO(data))
    except DicomError:
        return
    assert meta.rows >= 1 and meta.columns >= 1


def test_the_seeds_themselves_read():
    for data in SEEDS.values():
        assert read_slice(data).hu.shape == (32, 32)
