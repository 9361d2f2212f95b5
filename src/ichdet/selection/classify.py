"""What a series is, from header text alone: pure functions, one per question.

Each answer is a short lower-case word; "unknown" when the header does not say. The vendor
naming of reconstruction kernels (ConvolutionKernel):

- GE: SOFT, STANDARD, SMOOTH (soft tissue); DETAIL, BONE, BONEPLUS, EDGE, LUNG, CHEST (sharp);
- Siemens: a letter group and a sharpness number, optionally a suffix (H30s, J40s, Hr38,
  Br64, Qr40, B70f, C30s, Hr68, U90u): numbers up to 49 are soft, 50-59 medium (read as
  soft), 60 and above sharp; the U (ultra-high resolution) kernels are sharp;
- Philips: A, B, UA, UB, UC, UD, CB (soft); C, D, E, EB, EC, L, YA-YD, "SHARP" (sharp);
- Canon / Toshiba: FCnn: FC01-FC29 soft (FC2x are the brain kernels), FC30-FC39 and FC80-FC89
  bone, FC50-FC59 lung (sharp), FC6x inner ear (sharp);
- any vendor: names holding BONE, SHARP, LUNG, EDGE, DETAIL are sharp; SOFT, BRAIN, STANDARD,
  SMOOTH, HEAD, CEREBRUM are soft.
"""

from __future__ import annotations

import math
import re

import numpy as np

#: SOP classes of single-slice CT images ichdet reads, and others it recognises.
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
SOP_CLASSES = {
    CT_IMAGE_STORAGE: "ct image",
    ENHANCED_CT: "enhanced ct (multi-frame)",
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
    "1.2.840.10008.5.1.4.1.1.88.67": "radiation dose sr",
    "1.2.840.10008.5.1.4.1.1.88.22": "enhanced sr",
    "1.2.840.10008.5.1.4.1.1.88.33": "comprehensive sr",
    "1.2.840.10008.5.1.4.1.1.88.34": "comprehensive 3d sr",
    "1.2.840.10008.5.1.4.1.1.11.1": "presentation state",
    "1.2.840.10008.5.1.4.1.1.88.59": "key object selection",
    "1.2.840.10008.5.1.4.1.1.66.4": "segmentation",
}

#: An axial series may be tilted by the gantry up to this angle (degrees; scanners allow ~30).
MAX_TILT_DEG = 35.0

_SHARP_WORDS = ("BONE", "SHARP", "LUNG", "EDGE", "DETAIL", "CHEST", "HIGH RES", "HR BONE")
_SOFT_WORDS = ("SOFT", "BRAIN", "STANDARD", "SMOOTH", "HEAD", "CEREBRUM", "STND", "NEURO")
_SIEMENS = re.compile(r"^([A-Z]{1,2})(\d{2})([A-Z]?)(\\\d)?$")
_CANON = re.compile(r"^FC(\d{2})")
_PHILIPS_SOFT = {"A", "B", "UA", "UB", "UC", "UD", "CB", "XCA", "XCB"}
_PHILIPS_SHARP = {"C", "D", "E", "EB", "EC", "L", "YA", "YB", "YC", "YD", "YE", "YF"}


def sop_class(uid: str) -> str:
    """What a SOP class UID stores ("" means unknown: RSNA files leave it out)."""
    if not uid:
        return "unknown"
    return SOP_CLASSES.get(uid.strip(), "other object")


def _vendor_kernel(first: str) -> str | None:
    """A kernel by the vendors' number schemes (Canon FCnn, Siemens letters + number)."""
    if match := _CANON.match(first):
        return "soft" if int(match.group(1)) < 30 else "sharp"
    if match := _SIEMENS.match(first):
        letters, number = match.group(1), int(match.group(2))
        return "sharp" if letters.startswith("U") or number >= 60 else "soft"
    if first in _PHILIPS_SHARP or first in _PHILIPS_SOFT:
        return "sharp" if first in _PHILIPS_SHARP else "soft"
    return None


def kernel_class(kernel: str) -> str:
    """ "soft" | "sharp" | "unknown" for a ConvolutionKernel value (see the module docstring)."""
    name = kernel.upper().strip()
    if not name:
        return "unknown"
    by_vendor = _vendor_kernel(name.split("\\")[0].strip())
    if by_vendor is not None:
        return by_vendor
    if any(word in name for word in _SHARP_WORDS):
        return "sharp"
    return "soft" if any(word in name for word in _SOFT_WORDS) else "unknown"


_PROJECTIONS = ("MIP", "MINIP", "MINIMUM IP", "MAXIMUM IP", "PROJECTION IMAGE", "VR")


def image_type_class(image_type: str) -> str:
    """ "localizer" | "projection" (MIP, MinIP, projection) | "reformat" (MPR, reformatted,
    curved) | "derived" | "original" | "unknown", from ImageType (values joined by "\\")."""
    values = [v.strip().upper() for v in image_type.split("\\") if v.strip()]
    joined = " ".join(values)
    rules = [
        (not values, "unknown"),
        ("LOCALIZER" in values or "SCOUT" in joined or "TOPOGRAM" in joined, "localizer"),
        (any(v in _PROJECTIONS for v in values) or "PROJECTION" in joined, "projection"),
        ("VOLUME RENDER" in joined, "projection"),
        (any(v in ("MPR", "REFORMATTED", "CURVED", "CPR") for v in values), "reformat"),
        (bool(values) and (values[0] == "DERIVED" or "SECONDARY" in values), "derived"),
        (bool(values) and values[0] == "ORIGINAL", "original"),
    ]
    return next((kind for hit, kind in rules if hit), "unknown")


_LOCALIZER_WORDS = re.compile(r"\b(SCOUT|LOCALI[SZ]ER|TOPOGRAM|SURVIEW|SCANOGRAM|PILOT|TOPO)\b")


def localizer_hint(description: str) -> bool:
    """A series description that names a localizer (weak evidence: ImageType first)."""
    return bool(_LOCALIZER_WORDS.search(description.upper()))


def orientation_class(orientation: str) -> tuple[str, float]:
    """("axial" | "coronal" | "sagittal" | "oblique" | "unknown", angle in degrees between the
    slice normal and the body's long axis) from ImageOrientationPatient (values joined by "\\").
    Axial allows a gantry tilt of up to ``MAX_TILT_DEG``."""
    try:
        values = [float(v) for v in orientation.split("\\")] if orientation else []
    except ValueError:
        values = []
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        return "unknown", math.nan
    normal = np.cross(values[:3], values[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-3:
        return "unknown", math.nan
    normal = np.abs(normal / length)
    tilt = math.degrees(math.acos(min(1.0, float(normal[2]))))
    if tilt <= MAX_TILT_DEG:
        return "axial", tilt
    side = math.degrees(math.acos(min(1.0, max(float(normal[0]), float(normal[1])))))
    if side <= MAX_TILT_DEG:
        return ("sagittal" if normal[0] > normal[1] else "coronal"), tilt
    return "oblique", tilt


_HEAD_PARTS = ("HEAD", "BRAIN", "SKULL", "CRANE", "KOPF", "SCHAEDEL", "CEREBRUM", "CABEZA")
_OTHER_PARTS = (
    "CHEST", "THORAX", "ABDOMEN", "PELVIS", "SPINE", "NECK", "CSPINE", "LSPINE", "TSPINE",
    "HEART", "LUNG", "EXTREMITY", "KNEE", "SHOULDER", "HIP", "WHOLEBODY", "TRUNK", "LEG",
    "ARM", "HAND", "FOOT", "ANKLE", "WRIST", "ELBOW", "CAP",
)  # fmt: skip


def body_part_class(body_part: str) -> str:
    """ "head" | "other" | "unknown" from BodyPartExamined (HEADNECK counts as head)."""
    name = body_part.upper().replace(" ", "").replace("_", "")
    if not name:
        return "unknown"
    if any(part in name for part in _HEAD_PARTS):
        return "head"
    if any(part in name for part in _OTHER_PARTS):
        return "other"
    return "unknown"


#: Series description words that say "with contrast" / "without", in several languages
#: (weakest evidence: used only when the contrast tags are absent).
_NO_CONTRAST = re.compile(
    r"\b(NON[- ]?CON\w*|NONCONTRAST|PRE[- ]?CONTRAST|PRE|W/?O|WO|WITHOUT|PLAIN|NATIV\w*|"
    r"OHNE\s*KM|SIN\s+CONTRASTE|SANS\s+(INJ\w*|PRODUIT|CONTRASTE)|SENZA\s*(MDC|CONTRASTO)|"
    r"ZONDER\s+CONTRAST|BLANK|NCCT|UNENHANCED)\b"
)
_CONTRAST = re.compile(
    r"(\bC\+|\+C\b|\bPOST\b|\bCONTRAST\b|\bW/C\b|\bWITH\s+CONTRAST\b|\bCE\b|\bCECT\b|"
    r"\bCTA\b|\bANGIO\w*|\bARTERIAL\b|\bVENOUS\b|\bVENO\w*|\bMIT\s*KM\b|\bKM\b|"
    r"\bCON\s+CONTRASTE\b|\bAVEC\s+INJ\w*|\bINJECT\w*|\bCON\s*MDC\b|\bMDC\b|"
    r"\bMET\s+CONTRAST\b|\bENHANCED\b|\bPERFUSION\b)"
)
_NONE_VALUES = {"", "NONE", "NO", "N", "N/A", "NA", "0", "NIL", "-", "NONE GIVEN", "NO CONTRAST"}


def contrast_class(contrast: str, description: str) -> tuple[str, str]:
    """("contrast" | "none" | "unknown", the evidence): the contrast tags first (an agent, a
    route or a volume given), then the series description's words."""
    tags = contrast.strip().upper()
    if tags and tags not in _NONE_VALUES:
        return "contrast", f"contrast tags ({contrast.strip()[:40]})"
    if tags in _NONE_VALUES - {""}:
        return "none", "contrast tags say none"
    words = description.upper()
    if _NO_CONTRAST.search(words):
        return "none", "series description"
    if _CONTRAST.search(words):
        return "contrast", f"series description ({description.strip()[:40]})"
    return "unknown", ""
