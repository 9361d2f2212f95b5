"""Series classification from header text: vendor kernel names, ImageType, orientation, contrast
and body part, and the series descriptions and kernels of pydicom's own example files (highdicom
ships none)."""

import math

import pydicom
import pytest
from pydicom.data import get_testdata_file

from ichdet.dicom.header import series_facts
from ichdet.selection.classify import (
    body_part_class,
    contrast_class,
    image_type_class,
    kernel_class,
    localizer_hint,
    orientation_class,
    sop_class,
)


@pytest.mark.parametrize(
    "kernel, expected",
    [
        # GE
        ("SOFT", "soft"),
        ("STANDARD", "soft"),
        ("BONE", "sharp"),
        ("BONEPLUS", "sharp"),
        ("DETAIL", "sharp"),
        ("LUNG", "sharp"),
        ("EDGE", "sharp"),
        # Siemens: letters, sharpness number, suffix
        ("H30s", "soft"),
        ("J30s", "soft"),
        ("Hr38", "soft"),
        ("Hr40\\3", "soft"),
        ("Qr40", "soft"),
        ("C30s", "soft"),
        ("H45s", "soft"),
        ("Br64", "sharp"),
        ("H70h", "sharp"),
        ("B70f", "sharp"),
        ("Hr68", "sharp"),
        ("U90u", "sharp"),
        # Philips
        ("UB", "soft"),
        ("UC", "soft"),
        ("B", "soft"),
        ("D", "sharp"),
        ("EB", "sharp"),
        ("YC", "sharp"),
        ("L", "sharp"),
        # Canon / Toshiba
        ("FC21", "soft"),
        ("FC26", "soft"),
        ("FC30", "sharp"),
        ("FC35", "sharp"),
        ("FC52", "sharp"),
        ("FC81", "sharp"),
        # any vendor, by words; and what no table knows
        ("Brain", "soft"),
        ("HEAD SHARP", "sharp"),
        ("11", "unknown"),
        ("", "unknown"),
    ],
)
def test_kernel_names(kernel, expected):
    assert kernel_class(kernel) == expected


@pytest.mark.parametrize(
    "image_type, expected",
    [
        ("ORIGINAL\\PRIMARY\\AXIAL", "original"),
        ("ORIGINAL\\PRIMARY\\LOCALIZER", "localizer"),
        ("DERIVED\\SECONDARY\\MPR", "reformat"),
        ("DERIVED\\SECONDARY\\REFORMATTED\\AVERAGE", "reformat"),
        ("DERIVED\\SECONDARY\\MIP", "projection"),
        ("DERIVED\\SECONDARY\\PROJECTION IMAGE", "projection"),
        ("DERIVED \\PRIMARY\\AXIAL", "derived"),
        ("", "unknown"),
    ],
)
def test_image_types(image_type, expected):
    assert image_type_class(image_type) == expected


def _iop(tilt_deg: float, axis: str = "x") -> str:
    t = math.radians(tilt_deg)
    if axis == "x":  # gantry tilt: columns rotate about the left-right axis
        values = (1, 0, 0, 0, math.cos(t), -math.sin(t))
    else:
        values = (math.cos(t), 0, -math.sin(t), 0, 1, 0)
    return "\\".join(f"{v:.4f}" for v in values)


@pytest.mark.parametrize(
    "orientation, expected",
    [
        (_iop(0), "axial"),
        (_iop(20), "axial"),  # CQ500 and RSNA have such gantry tilts
        (_iop(30), "axial"),
        (_iop(45), "oblique"),
        ("1\\0\\0\\0\\0\\-1", "coronal"),
        ("0\\1\\0\\0\\0\\-1", "sagittal"),
        (_iop(80, "y"), "sagittal"),
        ("", "unknown"),
        ("1\\0\\0\\1\\0\\0", "unknown"),  # degenerate: no normal
        ("a\\b\\c\\d\\e\\f", "unknown"),
    ],
)
def test_orientations(orientation, expected):
    assert orientation_class(orientation)[0] == expected


def test_tilt_is_measured():
    assert orientation_class(_iop(20))[1] == pytest.approx(20, abs=0.1)


@pytest.mark.parametrize(
    "tags, description, expected",
    [
        ("", "PRE CONTRAST THIN", "none"),  # CQ500's series names
        ("", "0.625mm", "unknown"),
        ("", "2.5/5mm", "unknown"),
        ("", "BONE", "unknown"),
        ("", "5/5mm Plain", "none"),
        ("", "CT HEAD W/O", "none"),
        ("", "HEAD C+", "contrast"),
        ("", "POST CONTRAST", "contrast"),
        ("", "CTA HEAD", "contrast"),
        ("", "CT KOPF NATIV", "none"),
        ("", "SCHAEDEL MIT KM", "contrast"),
        ("", "CRANE SANS INJECTION", "none"),
        ("", "CRANE AVEC INJECTION", "contrast"),
        ("", "CRANEO SIN CONTRASTE", "none"),
        ("", "CRANEO CON CONTRASTE", "contrast"),
        ("", "ENCEFALO SENZA MDC", "none"),
        ("", "ENCEFALO CON MDC", "contrast"),
        ("", "HERSENEN ZONDER CONTRAST", "none"),
        ("", "HERSENEN MET CONTRAST", "contrast"),
        ("ISOVUE300/100", "", "contrast"),
        ("IOHEXOL IV 80 ml", "ROUTINE BRAIN", "contrast"),
        ("NONE", "HEAD C+", "none"),  # the tags outrank the description
    ],
)
def test_contrast(tags, description, expected):
    assert contrast_class(tags, description)[0] == expected


@pytest.mark.parametrize(
    "body_part, expected",
    [
        ("HEAD", "head"),
        ("BRAIN", "head"),
        ("HEADNECK", "head"),
        ("SKULL", "head"),
        ("CHEST", "other"),
        ("CSPINE", "other"),
        ("WHOLE BODY", "other"),
        ("ABDOMEN", "other"),
        ("", "unknown"),
        ("XYZ", "unknown"),
    ],
)
def test_body_parts(body_part, expected):
    assert body_part_class(body_part) == expected


@pytest.mark.parametrize(
    "description, expected",
    [("Scout", True), ("FAST LOCALIZER", True), ("T/S/C RF FAST PILOT", True), ("HEAD", False)],
)
def test_localizer_by_description(description, expected):
    assert localizer_hint(description) is expected


#: pydicom's own files, as ``series_facts`` reads them, and what selection makes of them.
PYDICOM_FILES = [
    # (file, kernel, image type, contrast, body part, sop class)
    ("CT_small.dcm", "soft", "original", "contrast", "unknown", "ct image"),
    ("693_J2KI.dcm", "soft", "derived", "none", "unknown", "ct image"),
    ("J2K_pixelrep_mismatch.dcm", "unknown", "original", "unknown", "head", "ct image"),
    ("examples_overlay.dcm", "unknown", "reformat", "contrast", "other", "other object"),
    ("reportsi.dcm", "unknown", "unknown", "unknown", "unknown", "other object"),
    # pydicom's DICOMDIR test set: a head series, its scout, and a cardiac scan
    ("17136", "soft", "original", "unknown", "head", "ct image"),
    ("6924", "soft", "localizer", "unknown", "unknown", "ct image"),
    ("2392", "soft", "original", "unknown", "unknown", "ct image"),
]


@pytest.mark.parametrize("name, kernel, image_type, contrast, body, sop", PYDICOM_FILES)
def test_pydicom_example_files(name, kernel, image_type, contrast, body, sop):
    path = get_testdata_file(name, read=False, download=False)
    if path is None:
        pytest.skip(f"pydicom {pydicom.__version__} does not ship {name}")
    facts = series_facts(pydicom.dcmread(path, stop_before_pixels=True))
    assert kernel_class(facts.kernel) == kernel
    assert image_type_class(facts.image_type) == image_type
    assert contrast_class(facts.contrast, facts.description)[0] == contrast
    assert body_part_class(facts.body_part) == body
    assert sop_class(facts.sop_class_uid) == sop
