"""The other series of a real head-CT study, made from a synthetic study's phantom
(``ichdet synth --series``): what series selection must tell apart from the axial brain series.

- ``localizer``: one lateral scout (ImageType ORIGINAL\\PRIMARY\\LOCALIZER);
- ``bone``: the axial series in a bone kernel (sharpened, noisy; ConvolutionKernel BONE);
- ``coronal`` / ``sagittal``: reformats of the axial volume (DERIVED\\SECONDARY\\MPR);
- ``contrast``: the axial series after iodinated contrast (enhancing vessels and dura;
  ContrastBolusAgent given);
- ``thin``: the same head in thin slices (``m`` per axial slice, centred on it, noisier), as
  scanners reconstruct beside the 5 mm series;
- ``dose-sr``: a radiation dose report (an SR: no image);
- ``chest``: a chest series in the same study (a trauma scan), BodyPartExamined CHEST.

Only the axial series carries labels; the others are written beside it (same folder, same
study) without rows in the label CSVs. Deterministic for the study's seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from ichdet.dicom.header import SYNTHETIC_MANUFACTURER
from ichdet.dicom.read import quiet_pydicom
from ichdet.dicom.write import ct_dataset, save_dataset
from ichdet.synth.phantom import Grid, StudyPlan, render_slice

VARIANTS = ("localizer", "bone", "coronal", "sagittal", "contrast", "thin", "dose-sr", "chest")
DOSE_SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.67"
#: The main axial series' header when variants are written (what a scanner would say).
MAIN_SERIES = {
    "SeriesNumber": 2,
    "SeriesDescription": "HEAD 5mm",
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
    "ConvolutionKernel": "STANDARD",
    "BodyPartExamined": "HEAD",
}


def parse_variants(text: str | None) -> tuple[str, ...]:
    """``"bone,thin"`` -> ("bone", "thin"); ``"all"`` -> every variant."""
    if not text:
        return ()
    names = VARIANTS if text.strip() == "all" else tuple(n.strip() for n in text.split(","))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown series {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    return tuple(dict.fromkeys(names))


@dataclasses.dataclass(frozen=True)
class Context:
    """What a variant needs of its study: ids, geometry and the axial series' HU volume."""

    study_id: str
    patient_id: str
    series_id: str
    plan: StudyPlan
    volume: np.ndarray  # the axial series' HU, n x H x W, in z order
    folder: Path
    rng_seed: int
    origin: tuple[float, float, float]  # the axial series' position at z = 0
    orientation: tuple[float, ...]  # ... and its orientation (a gantry tilt included)

    def axial(self, z: float) -> dict:
        """Geometry of an axial slice at height ``z``, as the main series has it."""
        normal = np.cross(self.orientation[:3], self.orientation[3:])
        return {
            "position": tuple(float(v) for v in np.asarray(self.origin) + z * normal),
            "orientation": self.orientation,
            "pixel_spacing": (self.plan.spacing, self.plan.spacing),
        }

    def uid(self, variant: str, k: int | None = None) -> str:
        """A deterministic RSNA-style id for a variant's series (k None) or its slice k."""
        key = f"{self.study_id}/{variant}" + ("" if k is None else f"/{k}")
        return "ID_" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()[:10]


def _write(ctx: Context, variant: str, k: int, hu: np.ndarray, tags: dict, **geometry) -> None:
    stored = np.clip(np.rint(hu) + 1024, -2000, 32767).astype(np.int16)
    ds = ct_dataset(
        stored,
        sop_instance_uid=ctx.uid(variant, k),
        study_instance_uid=ctx.study_id,
        series_instance_uid=ctx.uid(variant),
        patient_id=ctx.patient_id,
        instance_number=k + 1,
        **geometry,
    )
    ds.Manufacturer = SYNTHETIC_MANUFACTURER
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    save_dataset(ds, ctx.folder / f"{ctx.uid(variant, k)}.dcm")


def _axial(ctx: Context, variant: str, images: list[np.ndarray], tags: dict) -> None:
    """An axial series at the main series' positions."""
    plan = ctx.plan
    for k, hu in enumerate(images):
        geometry = ctx.axial(plan.slice_z(k))
        _write(ctx, variant, k, hu, tags, slice_thickness=plan.thickness, **geometry)


def bone(ctx: Context) -> None:
    rng = np.random.default_rng([ctx.rng_seed, 1])
    images = []
    for hu in ctx.volume:
        sharp = hu + 1.0 * (hu - cv2.GaussianBlur(hu, (0, 0), 1.0))
        images.append(sharp + rng.normal(0, 25, hu.shape).astype(np.float32))
    tags = {"SeriesNumber": 3, "SeriesDescription": "HEAD BONE", "ConvolutionKernel": "BONE"}
    _axial(ctx, "bone", images, {**tags, "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]})


def contrast(ctx: Context) -> None:
    rng = np.random.default_rng([ctx.rng_seed, 2])
    images = []
    for hu in ctx.volume:
        out = hu.copy()
        brain = (hu > 15) & (hu < 60)
        out[brain] += 6.0  # grey matter enhances a little
        ys, xs = np.nonzero(brain)
        for i in rng.choice(len(ys), size=min(len(ys), 12), replace=False) if len(ys) else []:
            cv2.circle(out, (int(xs[i]), int(ys[i])), max(1, hu.shape[0] // 160), 180.0, -1)
        images.append(out)
    tags = {
        "SeriesNumber": 5,
        "SeriesDescription": "HEAD C+",
        "ContrastBolusAgent": "IOHEXOL 350",
        "ContrastBolusRoute": "IV",
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "ConvolutionKernel": "STANDARD",
    }
    _axial(ctx, "contrast", images, tags)


def thin(ctx: Context) -> None:
    """``m`` thin slices per axial slice, centred on it (m = thickness / 0.625, at least 2)."""
    plan = ctx.plan
    m = max(2, int(round(plan.thickness / 0.625)))
    step = plan.thickness / m
    thin_plan = dataclasses.replace(
        plan,
        n_slices=plan.n_slices * m,
        thickness=step,
        z_start=plan.z_start - (m - 1) / 2 * step,
        noise_scale=plan.noise_scale * float(np.sqrt(m / 2)),  # thin slices are noisier
        seed=plan.seed + 1,
    )
    grid = Grid.for_plan(thin_plan)
    tags = {
        "SeriesNumber": 6,
        "SeriesDescription": f"HEAD {step:.3g}mm",
        "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "ConvolutionKernel": "STANDARD",
    }
    for k in range(thin_plan.n_slices):
        hu = render_slice(thin_plan, k, grid)[0]
        geometry = ctx.axial(thin_plan.slice_z(k))
        _write(ctx, "thin", k, hu, tags, slice_thickness=step, **geometry)


def _reformat(ctx: Context, variant: str, axis: int) -> None:
    """Coronal (axis 1) or sagittal (axis 2) planes every ~10 mm through the volume."""
    plan, volume = ctx.plan, ctx.volume
    every = max(1, int(round(10 / plan.spacing)))
    half = (plan.size - 1) / 2 * plan.spacing
    top = plan.slice_z(len(volume) - 1)
    for k, j in enumerate(range(every // 2, plan.size, every)):
        image = np.take(volume, j, axis=axis)[::-1]  # rows from the top of the head down
        offset = j * plan.spacing - half
        orientation: tuple[float, ...]
        position: tuple[float, float, float]
        if axis == 1:  # coronal: rows along +x, columns down -z
            orientation, position = (1.0, 0, 0, 0, 0, -1.0), (-half, offset, top)
        else:  # sagittal: rows along +y
            orientation, position = (0, 1.0, 0, 0, 0, -1.0), (offset, -half, top)
        tags = {
            "SeriesNumber": 4 if axis == 1 else 7,
            "SeriesDescription": "COR MPR" if axis == 1 else "SAG MPR",
            "ImageType": ["DERIVED", "SECONDARY", "MPR"],
        }
        _write(
            ctx,
            variant,
            k,
            image,
            tags,
            position=position,
            orientation=orientation,
            pixel_spacing=(plan.thickness, plan.spacing),
            slice_thickness=plan.spacing,
        )


def localizer(ctx: Context) -> None:
    """A lateral scout: the volume's mean along x, stretched to a square image."""
    plan = ctx.plan
    profile = ctx.volume.clip(-1000, 2000).mean(axis=2)[::-1]  # z (top down) x y
    image = cv2.resize(profile.astype(np.float32), (plan.size, plan.size))
    tags = {
        "SeriesNumber": 1,
        "SeriesDescription": "SCOUT",
        "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"],
    }
    extent = plan.thickness * len(ctx.volume)
    _write(
        ctx,
        "localizer",
        0,
        image,
        tags,
        position=(0.0, -(plan.size - 1) / 2 * plan.spacing, plan.slice_z(len(ctx.volume) - 1)),
        orientation=(0, 1.0, 0, 0, 0, -1.0),
        pixel_spacing=(extent / plan.size, plan.spacing),
    )


def chest(ctx: Context) -> None:
    """40 slices of a chest 5 mm apart, below the head: body, lungs, spine, ribs."""
    plan = ctx.plan
    rng = np.random.default_rng([ctx.rng_seed, 3])
    half = (plan.size - 1) / 2
    yy, xx = (np.mgrid[: plan.size, : plan.size] - half) * plan.spacing
    body = (xx / 150) ** 2 + (yy / 100) ** 2 <= 1
    lungs = ((np.abs(xx) - 70) / 50) ** 2 + (yy / 70) ** 2 <= 1
    spine = xx**2 + (yy - 70) ** 2 <= 15**2
    ribs = (
        body & ((xx / 140) ** 2 + (yy / 92) ** 2 >= 0.85) & (np.cos(10 * np.arctan2(yy, xx)) > 0.6)
    )
    base = np.where(body, 40.0, -1000.0)
    base[lungs] = -850.0
    base[spine | ribs] = 700.0
    tags = {"SeriesNumber": 8, "SeriesDescription": "CHEST", "BodyPartExamined": "CHEST"}
    tags["ImageType"] = ["ORIGINAL", "PRIMARY", "AXIAL"]
    for k in range(40):
        hu = (base + rng.normal(0, 8, base.shape)).astype(np.float32)
        _write(
            ctx,
            "chest",
            k,
            hu,
            tags,
            position=(-half * plan.spacing, -half * plan.spacing, plan.z_start - 400 + 5 * k),
            pixel_spacing=(plan.spacing, plan.spacing),
        )


def dose_sr(ctx: Context) -> None:
    """A radiation dose report: an SR object, no pixels (RSNA-style ids: quietly)."""
    with quiet_pydicom():
        _dose_sr(ctx)


def _dose_sr(ctx: Context) -> None:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(DOSE_SR_CLASS)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(ctx.uid("dose-sr", 0))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = DOSE_SR_CLASS, ctx.uid("dose-sr", 0)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ctx.study_id, ctx.uid("dose-sr")
    ds.PatientID, ds.Modality, ds.Manufacturer = ctx.patient_id, "SR", SYNTHETIC_MANUFACTURER
    ds.SeriesNumber, ds.SeriesDescription, ds.ValueType = 997, "Dose Report", "CONTAINER"
    save_dataset(ds, ctx.folder / f"{ctx.uid('dose-sr', 0)}.dcm")


WRITERS: dict[str, Callable[[Context], None]] = {
    "localizer": localizer,
    "bone": bone,
    "coronal": lambda ctx: _reformat(ctx, "coronal", 1),
    "sagittal": lambda ctx: _reformat(ctx, "sagittal", 2),
    "contrast": contrast,
    "thin": thin,
    "dose-sr": dose_sr,
    "chest": chest,
}


def write_variants(ctx: Context, variants: tuple[str, ...]) -> None:
    for name in variants:
        WRITERS[name](ctx)
