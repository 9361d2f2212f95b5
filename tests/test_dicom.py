import io
import logging
import math
import warnings
import zipfile

import numpy as np
import pydicom
import pytest
from conftest import transcode
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, RLELossless

from ichdet.dicom.header import slice_z
from ichdet.dicom.read import (
    AIR_HU,
    FIX_MONOCHROME1,
    FIX_PADDING,
    FIX_RSNA_12BIT,
    DicomError,
    read_hu,
    read_meta,
    read_slice,
)
from ichdet.dicom.write import ct_dataset, save_dataset


def _reference_hu(path):
    ds = pydicom.dcmread(path)
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float32)


def test_ct_small_matches_pydicom_modality_lut():
    path = get_testdata_file("CT_small.dcm")
    sl = read_slice(path)
    assert sl.hu.dtype == np.float32 and sl.hu.shape == (128, 128)
    np.testing.assert_array_equal(sl.hu, _reference_hu(path))
    assert sl.meta.modality == "CT" and sl.meta.fixes == ()


def test_ct_jpeg2000_matches_modality_lut_with_padding_to_air():
    path = get_testdata_file("693_J2KI.dcm")  # a real CT, JPEG 2000, stored down to -2971
    sl = read_slice(path)
    ref = _reference_hu(path)
    padded = ref < -1100
    assert padded.any() and FIX_PADDING in sl.meta.fixes
    np.testing.assert_array_equal(sl.hu[~padded], ref[~padded])
    assert (sl.hu[padded] == AIR_HU).all()


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_pydicom_encodings_decode_to_the_same_values(name):
    reference = read_slice(get_testdata_file("MR_small.dcm"), require_ct=False).hu
    np.testing.assert_array_equal(
        read_slice(get_testdata_file(name), require_ct=False).hu, reference
    )


@pytest.mark.parametrize("syntax", ["jpeg-lossless", "jpeg-ls", "j2k", "rle"])
def test_compressed_ct_reads_exact_hu(write_ct, hu_image, tmp_path, syntax):
    src = write_ct("plain.dcm", (hu_image + 1024).astype(np.int16))
    if syntax == "rle":
        ds = pydicom.dcmread(src)
        ds.compress(RLELossless)
        dst = save_dataset(ds, tmp_path / "rle.dcm")
    else:
        dst = transcode(src, tmp_path / f"{syntax}.dcm", syntax)
    assert pydicom.dcmread(dst).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(read_slice(dst).hu, hu_image.astype(np.float32))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"transfer_syntax": ImplicitVRLittleEndian},
        {"transfer_syntax": ExplicitVRBigEndian},
        {"intercept": "-1024.000000"},
    ],
    ids=["implicit-vr", "big-endian", "float-string-intercept"],
)
def test_signed_storage_encodings(write_ct, hu_image, kwargs):
    path = write_ct("s.dcm", (hu_image + 1024).astype(np.int16), **kwargs)
    sl = read_slice(path)
    np.testing.assert_array_equal(sl.hu, hu_image.astype(np.float32))
    np.testing.assert_array_equal(sl.hu, _reference_hu(path))


def test_unsigned_storage_with_intercept_minus_1000(write_ct, hu_image):
    path = write_ct("u.dcm", (hu_image + 1000).astype(np.uint16), intercept=-1000)
    np.testing.assert_array_equal(read_slice(path).hu, hu_image.astype(np.float32))


def test_rsna_12bit_bug_reads_back_true_hu(write_ct, hu_image):
    # RSNA's defective files: true HU h stored as h mod 4096, unsigned 12-bit, intercept 0.
    stored = np.mod(hu_image, 4096).astype(np.uint16)
    path = write_ct("bug.dcm", stored, intercept=0, bits_stored=12)
    sl = read_slice(path)
    np.testing.assert_array_equal(sl.hu, hu_image.astype(np.float32))
    assert FIX_RSNA_12BIT in sl.meta.fixes
    assert FIX_RSNA_12BIT in read_meta(path).fixes
    # The plain modality LUT gets these wrong: negative HU come out near +3000.
    assert (_reference_hu(path)[hu_image < 0] > 3000).all()


def test_12bit_with_proper_intercept_is_left_alone(write_ct, hu_image):
    path = write_ct(
        "ok12.dcm", (hu_image + 1024).astype(np.uint16), intercept=-1024, bits_stored=12
    )
    sl = read_slice(path)
    assert FIX_RSNA_12BIT not in sl.meta.fixes
    np.testing.assert_array_equal(sl.hu, hu_image.astype(np.float32))


def test_padding_value_and_out_of_fov_padding(write_ct, hu_image):
    stored = (hu_image + 1024).astype(np.int16)
    stored[:2, :2] = -2000  # the PixelPaddingValue declared below
    stored[-2:, -2:] = -2000 - 1024  # -3024 HU style padding, not declared
    path = write_ct("pad.dcm", stored, padding_value=-2000)
    sl = read_slice(path)
    assert (sl.hu[:2, :2] == AIR_HU).all() and (sl.hu[-2:, -2:] == AIR_HU).all()
    np.testing.assert_array_equal(sl.hu[4:-4, 4:-4], hu_image[4:-4, 4:-4].astype(np.float32))
    assert FIX_PADDING in sl.meta.fixes

    # an unsigned file whose padding value lies inside the tissue range is still masked
    stored_u = (hu_image + 1024).astype(np.uint16)
    stored_u[0, 0] = 1064  # would be 40 HU, but it is the declared padding
    sl_u = read_slice(write_ct("padu.dcm", stored_u, padding_value=1064))
    assert sl_u.hu[0, 0] == AIR_HU and (sl_u.hu[8:16][sl_u.hu[8:16] != AIR_HU] == 40).all()


def test_monochrome1_is_inverted(write_ct, hu_image):
    stored = (hu_image + 1024).astype(np.uint16)
    inverted = (4095 - stored).astype(np.uint16)
    path = write_ct("m1.dcm", inverted, bits_stored=12, intercept=-1024, photometric="MONOCHROME1")
    sl = read_slice(path)
    np.testing.assert_array_equal(sl.hu, hu_image.astype(np.float32))
    assert FIX_MONOCHROME1 in sl.meta.fixes


def test_metal_keeps_large_hu(write_ct, hu_image):
    stored = (hu_image + 1024).astype(np.int16)
    stored[30, 30] = 32000
    sl = read_slice(write_ct("metal.dcm", stored))
    assert sl.hu[30, 30] == 32000 - 1024


def test_rsna_ids_and_multivalued_windows_without_warnings(write_ct, hu_image, caplog):
    caplog.set_level(logging.INFO, logger="pydicom")
    path = write_ct(
        "ID_0a1b2c3d4.dcm",
        (hu_image + 1024).astype(np.int16),
        sop_instance_uid="ID_0a1b2c3d4",
        study_instance_uid="ID_deadbeef01",
        series_instance_uid="ID_feed01",
        patient_id="ID_cafe",
        window_center=["00036", "00036"],
        window_width=["00080", "00080"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sl = read_slice(path)
        meta = read_meta(path)
    assert meta == sl.meta
    assert not caplog.records  # pydicom logs invalid UIDs too; nothing may reach the user
    assert (sl.meta.sop_instance_uid, sl.meta.study_instance_uid) == (
        "ID_0a1b2c3d4",
        "ID_deadbeef01",
    )
    assert (sl.meta.window_center, sl.meta.window_width) == (36.0, 80.0)


def test_sources_path_bytes_and_file_like(write_ct, hu_image, tmp_path):
    path = write_ct("a.dcm", (hu_image + 1024).astype(np.int16))
    data = path.read_bytes()
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("stage_2_train/a.dcm", data)
    with zipfile.ZipFile(archive) as zf, zf.open("stage_2_train/a.dcm") as member:
        from_zip = read_slice(member)
    for sl in (read_slice(str(path)), read_slice(data), read_slice(io.BytesIO(data)), from_zip):
        np.testing.assert_array_equal(sl.hu, hu_image.astype(np.float32))


def test_z_and_slice_order_on_a_tilted_series(tmp_path):
    tilt = math.radians(15)
    orientation = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), -math.sin(tilt))
    normal = np.cross(orientation[:3], orientation[3:])
    rng = np.random.default_rng(1)
    order = rng.permutation(12)
    for k, i in enumerate(order):
        position = np.array([-125.0, -120.0, 30.0]) + 5.0 * i * normal
        # shear the position in-plane too: a naive sort on PositionZ alone would still work, a
        # sort by InstanceNumber or file name would not.
        position += 3.0 * np.array(orientation[3:]) * ((-1) ** i)
        ds = ct_dataset(
            np.zeros((8, 8), np.int16),
            position=position,
            orientation=orientation,
            instance_number=int(k + 1),
            sop_instance_uid=f"ID_{i:04d}",
        )
        save_dataset(ds, tmp_path / f"file_{k:02d}.dcm")
    metas = [read_meta(p) for p in sorted(tmp_path.glob("*.dcm"))]
    ordered = sorted(metas, key=lambda m: m.z)
    assert [m.sop_instance_uid for m in ordered] == [f"ID_{i:04d}" for i in range(12)]
    np.testing.assert_allclose(np.diff([m.z for m in ordered]), 5.0, atol=1e-4)
    assert slice_z(None, orientation) != slice_z(None, orientation)  # NaN when unknown


# ---------------------------------------------------------------- bad input


def test_not_dicom(tmp_path):
    junk = tmp_path / "notes.dcm"
    junk.write_text("this is not an image\n" * 20)
    with pytest.raises(DicomError, match=r"notes\.dcm: not a DICOM file"):
        read_slice(junk)
    with pytest.raises(DicomError, match="file not found"):
        read_slice(tmp_path / "missing.dcm")


def test_truncated_pixel_data_and_header(write_ct, hu_image, tmp_path):
    data = write_ct("t.dcm", (hu_image + 1024).astype(np.int16)).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(DicomError, match=r"cut\.dcm: .*truncated"):
        read_slice(cut)
    head = tmp_path / "head.dcm"
    head.write_bytes(data[:300])
    with pytest.raises(DicomError, match=r"head\.dcm"):
        read_slice(head)
    with pytest.raises(DicomError, match="truncated"):
        read_slice(get_testdata_file("MR_truncated.dcm"), require_ct=False)


def test_no_pixel_data(tmp_path, hu_image):
    ds = ct_dataset((hu_image + 1024).astype(np.int16))
    del ds.PixelData
    path = save_dataset(ds, tmp_path / "nopix.dcm")
    with pytest.raises(DicomError, match=r"nopix\.dcm: no pixel data"):
        read_slice(path)
    assert read_meta(path).rows == 64  # the header alone is fine


def test_rgb_wrong_modality_and_multiframe(tmp_path, hu_image):
    with pytest.raises(DicomError, match="colour image"):
        read_slice(get_testdata_file("SC_rgb_rle.dcm"), require_ct=False)
    rgb = ct_dataset((hu_image + 1024).astype(np.int16))
    rgb.SamplesPerPixel = 3
    rgb.PhotometricInterpretation = "RGB"
    with pytest.raises(DicomError, match=r"rgb\.dcm: colour image \(RGB"):
        read_slice(save_dataset(rgb, tmp_path / "rgb.dcm"))
    with pytest.raises(DicomError, match="modality is MR, not CT"):
        read_slice(get_testdata_file("MR_small.dcm"))
    multi = ct_dataset((hu_image + 1024).astype(np.int16))
    multi.NumberOfFrames = 2
    with pytest.raises(DicomError, match="multi-frame image"):
        read_slice(save_dataset(multi, tmp_path / "multi.dcm"))


def test_dicom_error_is_a_value_error():
    err = DicomError("x.dcm", "broken")
    assert isinstance(err, ValueError) and str(err) == "x.dcm: broken" and err.reason == "broken"


@pytest.mark.parametrize(
    ("stored_from_hu", "kwargs"),
    [
        (lambda h: np.mod(h, 4096).astype(np.uint16), {"intercept": 0, "bits_stored": 12}),
        (lambda h: (h + 1024).astype(np.int16), {"padding_value": -2000}),
        (
            lambda h: (4095 - (h + 1024)).astype(np.uint16),
            {"bits_stored": 12, "intercept": -1024, "photometric": "MONOCHROME1"},
        ),
        (lambda h: ((h + 1024) // 2).astype(np.int16), {"slope": 2.0, "intercept": "-1024.000"}),
    ],
    ids=["rsna-12bit", "padding", "monochrome1", "slope"],
)
def test_read_hu_is_read_slice_hu(write_ct, hu_image, stored_from_hu, kwargs):
    stored = stored_from_hu(hu_image)
    if "padding_value" in kwargs:
        stored[:2, :2] = -2000
    path = write_ct("x.dcm", stored, **kwargs)
    expected = read_slice(path)
    assert expected.meta.fixes or "slope" in kwargs  # the cases exercise the fixes
    np.testing.assert_array_equal(read_hu(path), expected.hu)


def test_read_hu_rejects_what_read_slice_rejects(write_ct, hu_image, tmp_path):
    path = write_ct("mr.dcm", (hu_image + 1024).astype(np.int16), modality="MR")
    with pytest.raises(DicomError, match="modality is MR, not CT"):
        read_hu(path)
    (tmp_path / "text.dcm").write_text("hello")
    with pytest.raises(DicomError, match="not a DICOM file"):
        read_hu(tmp_path / "text.dcm")
