"""Synthetic head-CT phantoms with 3D hemorrhages (pure numpy; no I/O).

A study is a :class:`StudyPlan` drawn from a random generator; :func:`render_slice` turns one axial
slice of it into HU (float32, H x W) and one boolean mask per hemorrhage subtype present.

Coordinates are in mm in the slice frame: x along image rows (left-right), y along columns
(anterior-posterior, +y posterior as in DICOM's LPS), z along the slice normal. The head is an
ellipsoid; its cross-section at height z is the ellipse scaled by ``s(z) = sqrt(1 - (z/c)^2)``.
Layers from outside in: scalp, skull (outer table, diploe, inner table), grey matter with CSF
sulci, white matter, lateral ventricles. Hemorrhages are 3D shapes in that frame, so they span
neighbouring slices consistently:

- epidural: a biconvex lens against the inner skull (thick center, tapering edges);
- subdural: a wide thin crescent along the inner skull;
- intraparenchymal: an irregular blob in the brain, with a faint hypodense edema rim;
- intraventricular: blood layering in the dependent (posterior) part of a lateral ventricle;
- subarachnoid: blood filling the sulci and the surface of a sector of the brain, or the basal
  cisterns and sylvian fissures (the classic star shape) on the lower slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ichdet.labels import SUBTYPES

#: Relative frequency of subtypes among lesions (epidural rarest, as in RSNA).
SUBTYPE_FREQUENCY = {
    "subdural": 0.30,
    "intraparenchymal": 0.25,
    "subarachnoid": 0.22,
    "intraventricular": 0.16,
    "epidural": 0.07,
}
#: A subtype counts as present on a slice when its mask covers at least this area.
MIN_LESION_AREA_MM2 = 6.0


@dataclass
class Lesion:
    subtype: str
    hu: float
    z0: float  # center height (mm)
    z_radius: float  # half extent along z (mm)
    angle: float = 0.0  # direction on the skull (rad), for epidural/subdural/subarachnoid
    angular_radius: float = 0.5  # half extent around the skull (rad)
    thickness: float = 5.0  # max thickness (mm) for epidural/subdural
    center: tuple[float, float] = (0.0, 0.0)  # in-plane center (mm), intraparenchymal
    radius: float = 10.0  # in-plane radius (mm), intraparenchymal
    harmonics: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    side: int = 1  # which lateral ventricle (+1 right, -1 left)
    level: float = 0.0  # fill level inside the ventricle (fraction of its y extent)
    cisternal: bool = False  # subarachnoid: basal cisterns and sylvian fissures, not sulci


@dataclass
class StudyPlan:
    """Everything needed to render a study's slices deterministically."""

    size: int
    spacing: float  # mm per pixel
    n_slices: int
    thickness: float  # slice spacing (mm)
    z_start: float  # height of the first slice relative to the head center (mm)
    a: float  # head semi-axis x (mm)
    b: float  # head semi-axis y (mm)
    c: float  # head semi-axis z (mm)
    skull: float  # skull thickness (mm)
    scalp: float  # scalp thickness (mm)
    grey_hu: float
    white_hu: float
    csf_hu: float
    noise_hu: float
    sulci_count: int
    sulci_phase: float
    ventricle: tuple[float, float, float]  # semi-axes (mm)
    lesions: list[Lesion] = field(default_factory=list)
    seed: int = 0

    def slice_z(self, k: int) -> float:
        return self.z_start + k * self.thickness


def plan_study(
    rng: np.random.Generator,
    size: int = 512,
    positive: bool | None = None,
    lesion_count: int | None = None,
) -> StudyPlan:
    """Draw a study: anatomy, slice geometry, and (if positive) 1-3 hemorrhages."""
    a, b, c = rng.uniform(66, 76), rng.uniform(86, 98), rng.uniform(78, 90)
    fov = rng.uniform(2 * b + 25, 2 * b + 50)
    n_slices = int(rng.integers(20, 61))
    coverage = rng.uniform(1.45, 1.7) * c  # from the skull base to the vertex
    thickness = coverage / n_slices
    plan = StudyPlan(
        size=size,
        spacing=fov / size,
        n_slices=n_slices,
        thickness=thickness,
        z_start=-0.72 * c,
        a=a,
        b=b,
        c=c,
        skull=rng.uniform(5.5, 8.0),
        scalp=rng.uniform(3.0, 6.0),
        grey_hu=rng.uniform(36, 44),
        white_hu=rng.uniform(25, 31),
        csf_hu=rng.uniform(2, 10),
        noise_hu=rng.uniform(3.0, 6.0),
        sulci_count=int(rng.integers(14, 26)),
        sulci_phase=rng.uniform(0, 2 * math.pi),
        ventricle=(rng.uniform(6, 10), rng.uniform(20, 30), rng.uniform(15, 22)),
        seed=int(rng.integers(2**31)),
    )
    if positive is None:
        positive = rng.random() < 0.33
    if positive:
        count = lesion_count or int(rng.choice([1, 1, 1, 2, 2, 3]))
        names = list(SUBTYPE_FREQUENCY)
        probs = np.array(list(SUBTYPE_FREQUENCY.values()))
        for name in rng.choice(names, size=count, p=probs / probs.sum()):
            plan.lesions.append(draw_lesion(rng, str(name), plan))
    return plan


def draw_lesion(rng: np.random.Generator, subtype: str, plan: StudyPlan) -> Lesion:
    """One hemorrhage of ``subtype``, sized from subtle to obvious."""
    c = plan.c
    hu = rng.uniform(55, 85)
    if subtype == "epidural":
        return Lesion(
            subtype,
            hu,
            z0=rng.uniform(-0.15, 0.6) * c,
            z_radius=rng.uniform(12, 28),
            angle=rng.uniform(0, 2 * math.pi),
            angular_radius=rng.uniform(0.25, 0.5),
            thickness=rng.uniform(6, 20),
        )
    if subtype == "subdural":
        return Lesion(
            subtype,
            hu,
            z0=rng.uniform(-0.1, 0.55) * c,
            z_radius=rng.uniform(15, 35),
            angle=rng.uniform(0, 2 * math.pi),
            angular_radius=rng.uniform(0.5, 1.1),
            thickness=rng.uniform(3.5, 13),
        )
    if subtype == "intraparenchymal":
        r, phi = rng.uniform(0.1, 0.5), rng.uniform(0, 2 * math.pi)
        return Lesion(
            subtype,
            hu,
            z0=rng.uniform(-0.15, 0.5) * c,
            z_radius=rng.uniform(6, 22),
            center=(r * plan.a * math.cos(phi), r * plan.b * math.sin(phi)),
            radius=rng.uniform(5, 22),
            harmonics=tuple(rng.uniform(-1, 1, 4)),
        )
    if subtype == "intraventricular":
        return Lesion(
            subtype,
            hu,
            z0=0.1 * c,
            z_radius=plan.ventricle[2],
            side=int(rng.choice([-1, 1])),
            level=rng.uniform(0.0, 0.8),
        )
    if subtype == "subarachnoid":
        cisternal = bool(rng.random() < 0.5)
        return Lesion(
            subtype,
            hu,
            z0=(rng.uniform(-0.4, -0.15) if cisternal else rng.uniform(-0.1, 0.55)) * c,
            z_radius=rng.uniform(15, 35),
            angle=rng.uniform(0, 2 * math.pi),
            angular_radius=rng.uniform(0.4, 1.2),
            cisternal=cisternal,
        )
    raise ValueError(f"unknown subtype {subtype!r}")


@dataclass
class Grid:
    """Pixel coordinates of a study's slices (mm), shared by all its slices."""

    x: np.ndarray
    y: np.ndarray
    rho: np.ndarray  # normalised ellipse radius sqrt((x/a)^2 + (y/b)^2)
    phi: np.ndarray  # polar angle
    fov: np.ndarray  # inside the scanner's circular field of view

    @classmethod
    def for_plan(cls, plan: StudyPlan) -> Grid:
        half = (plan.size - 1) / 2
        axis = ((np.arange(plan.size, dtype=np.float32) - half) * plan.spacing).astype(np.float32)
        x, y = np.meshgrid(axis, axis)  # x varies along columns of the image, y along rows
        rho = np.sqrt((x / plan.a) ** 2 + (y / plan.b) ** 2)
        phi = np.arctan2(y / plan.b, x / plan.a)
        fov = (x**2 + y**2) <= (half * plan.spacing) ** 2
        return cls(x=x, y=y, rho=rho, phi=phi, fov=fov)


def _angle_distance(phi: np.ndarray, angle: float) -> np.ndarray:
    return np.abs(np.angle(np.exp(1j * (phi - angle)))).astype(np.float32)


def render_slice(plan: StudyPlan, k: int, grid: Grid) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """HU (float32, H x W) of slice ``k`` and the masks of the subtypes present on it."""
    z = plan.slice_z(k)
    rng = np.random.default_rng([plan.seed, k])
    hu = np.full(grid.x.shape, -1000.0, dtype=np.float32)
    s2 = 1.0 - (z / plan.c) ** 2
    masks: dict[str, np.ndarray] = {}
    if s2 > 0.02:
        s = math.sqrt(s2)
        mean_axis = (plan.a + plan.b) / 2 * s
        r = grid.rho / s  # 1 at the scalp surface on this slice
        depth = (1.0 - r) * mean_axis  # mm below the scalp surface, roughly
        head = depth >= 0
        hu[head] = 35.0  # scalp / soft tissue
        inner = plan.scalp + plan.skull  # depth of the inner table
        bone = head & (depth >= plan.scalp) & (depth < inner)
        # skull profile: dense tables, spongier diploe in the middle
        u = (depth[bone] - plan.scalp) / plan.skull
        hu[bone] = 1750.0 - 1000.0 * np.sin(np.pi * u) ** 2
        brain = depth >= inner
        cortex = depth - inner  # mm below the inner table
        hu[brain] = plan.white_hu
        hu[brain & (cortex < 9.0)] = plan.grey_hu
        wave = np.sin(plan.sulci_count * grid.phi + plan.sulci_phase + 0.05 * z)
        # sulci ~1.5-2.5 mm wide, deepest near the surface; a thin CSF layer under the skull
        sulci = brain & (cortex < 8.0) & (np.abs(wave) < 0.22 + 0.08 * (cortex < 2.0))
        sulci |= brain & (cortex < 1.2)
        hu[sulci] = plan.csf_hu
        ventricles = [_ventricle(plan, grid, z, side) for side in (-1, 1)]
        cisterns = _cisterns(plan, grid, z) & brain
        hu[cisterns] = plan.csf_hu
        for v in ventricles:
            hu[v & brain] = plan.csf_hu
        for lesion in plan.lesions:
            mask = _lesion_mask(lesion, plan, grid, z, brain, cortex, sulci, ventricles, cisterns)
            if mask is None or not mask.any():
                continue
            if lesion.subtype == "intraparenchymal":
                rim = _blob(lesion, grid, z, scale=1.35) & brain & ~mask
                hu[rim] -= 8.0  # edema
            hu[mask] = np.maximum(hu[mask], lesion.hu)
            masks[lesion.subtype] = masks.get(lesion.subtype, np.zeros_like(mask)) | mask
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(plan.noise_hu)
    hu[~grid.fov] = -1000.0
    min_pixels = MIN_LESION_AREA_MM2 / plan.spacing**2
    masks = {name: m for name, m in masks.items() if m.sum() >= min_pixels}
    return hu, {name: masks[name] for name in SUBTYPES if name in masks}


def _ventricle(plan: StudyPlan, grid: Grid, z: float, side: int) -> np.ndarray:
    va, vb, vc = plan.ventricle
    dz = (z - 0.1 * plan.c) / vc
    if abs(dz) >= 1:
        return np.zeros(grid.x.shape, bool)
    scale = 1 - dz**2
    cx, cy = side * (va + 2.5), -0.05 * plan.b
    return ((grid.x - cx) / va) ** 2 + ((grid.y - cy) / vb) ** 2 < scale


def _blob(lesion: Lesion, grid: Grid, z: float, scale: float = 1.0) -> np.ndarray:
    dz = (z - lesion.z0) / lesion.z_radius
    if abs(dz) >= 1:
        return np.zeros(grid.x.shape, bool)
    dx, dy = grid.x - lesion.center[0], grid.y - lesion.center[1]
    theta = np.arctan2(dy, dx)
    h = lesion.harmonics
    radius = lesion.radius * (
        1 + 0.22 * h[0] * np.sin(2 * theta + 3 * h[1]) + 0.15 * h[2] * np.sin(3 * theta + 3 * h[3])
    )
    radius *= scale * math.sqrt(1 - dz**2)
    return dx**2 + dy**2 < radius**2


def _cisterns(plan: StudyPlan, grid: Grid, z: float) -> np.ndarray:
    """Basal cisterns (a ring around the brainstem) and sylvian fissures, low in the head."""
    if not -0.45 * plan.c < z < -0.12 * plan.c:
        return np.zeros(grid.x.shape, bool)
    cy = 0.05 * plan.b
    ring = np.abs(np.hypot(grid.x, grid.y - cy) - 15.0) < 2.0
    fissures = np.zeros(grid.x.shape, bool)
    for side in (-1, 1):  # from the suprasellar cistern out to the sides, angled forward
        x0, y0, x1, y1 = side * 12.0, cy - 14.0, side * 0.75 * plan.a, cy - 30.0
        t = np.clip(
            ((grid.x - x0) * (x1 - x0) + (grid.y - y0) * (y1 - y0))
            / ((x1 - x0) ** 2 + (y1 - y0) ** 2),
            0,
            1,
        )
        fissures |= np.hypot(grid.x - (x0 + t * (x1 - x0)), grid.y - (y0 + t * (y1 - y0))) < 1.6
    return ring | fissures


def _lesion_mask(
    lesion: Lesion,
    plan: StudyPlan,
    grid: Grid,
    z: float,
    brain: np.ndarray,
    cortex: np.ndarray,
    sulci: np.ndarray,
    ventricles: list[np.ndarray],
    cisterns: np.ndarray,
) -> np.ndarray | None:
    dz = (z - lesion.z0) / lesion.z_radius
    if abs(dz) >= 1 and lesion.subtype != "intraventricular":
        return None
    kind = lesion.subtype
    if kind in ("epidural", "subdural"):
        u2 = (_angle_distance(grid.phi, lesion.angle) / lesion.angular_radius) ** 2 + dz**2
        profile = np.sqrt(np.clip(1 - u2, 0, None))  # lens: thickest in the middle
        if kind == "subdural":
            profile = np.clip(1 - u2, 0, None) ** 0.25  # crescent: flat, then a quick taper
        return brain & (cortex < lesion.thickness * profile)
    if kind == "intraparenchymal":
        return _blob(lesion, grid, z) & brain & (cortex > 4.0)
    if kind == "intraventricular":
        v = ventricles[0 if lesion.side < 0 else 1]
        if not v.any():
            return None
        ys = grid.y[v]
        cut = ys.max() - (1 - lesion.level) * (ys.max() - ys.min())  # dependent layering
        return v & (grid.y >= cut) & brain
    if kind == "subarachnoid":
        return _subarachnoid(lesion, grid, dz, brain, cortex, sulci, cisterns)
    raise ValueError(f"unknown subtype {kind!r}")


def _subarachnoid(
    lesion: Lesion,
    grid: Grid,
    dz: float,
    brain: np.ndarray,
    cortex: np.ndarray,
    sulci: np.ndarray,
    cisterns: np.ndarray,
) -> np.ndarray:
    if lesion.cisternal:
        return cisterns & brain
    sector = _angle_distance(grid.phi, lesion.angle) < lesion.angular_radius * math.sqrt(
        max(0.0, 1 - dz**2)
    )
    # blood fills the sulci and the subarachnoid space over the convexity of a sector
    return (sulci | (brain & (cortex < 2.5))) & sector & (cortex > 0.3)
