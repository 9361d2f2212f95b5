"""Synthetic head-CT phantoms of the whole head, with 3D hemorrhages (pure numpy; no I/O).

A study is a :class:`StudyPlan` drawn from a random generator: a patient's head
(``synth.head``: size, age, densities, how it lies in the scanner), the confounders a normal
head carries (``synth.confounders``), the scanner's rendering (``synth.scanner``) and, if
positive, 1-3 bleeds (``synth.lesions``) with their mass effect. :func:`render_slice` turns one
axial slice into HU (float32, H x W) and one boolean mask per subtype present.

A slice covers the skull base (orbits, sinuses, petrous bones, posterior fossa) to the vertex;
the structures are built in ``vault`` (skull, floor, tentorium), ``skull_base`` and ``brain``.
A thick slice is the mean of three planes across its thickness (partial volume at the vertex,
the floor and every edge); its masks are those of its middle plane.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ichdet.labels import SUBTYPES
from ichdet.synth import scanner as scan
from ichdet.synth.brain import Warp, paint_brain
from ichdet.synth.confounders import (
    Confounders,
    draw_confounders,
    paint_calcifications,
    paint_headrest,
    paint_metal,
    paint_vessels,
)
from ichdet.synth.head import Coords, Head, draw_head
from ichdet.synth.lesions import (
    SUBTYPE_FREQUENCY,
    Lesion,
    lesion_mask,
    mass_effect,
    paint_lesion,
)
from ichdet.synth.lesions import draw_lesion as _draw
from ichdet.synth.scanner import Scanner, draw_scanner
from ichdet.synth.skull_base import paint_base
from ichdet.synth.vault import paint_skull, vault

__all__ = ["Grid", "Lesion", "StudyPlan", "SUBTYPE_FREQUENCY", "draw_lesion", "plan_study"]

#: A subtype counts as present on a slice when its mask covers at least this area (a bleed
#: of ~5 mm: the sliver at a bleed's edge that no reader would call is not labelled).
MIN_LESION_AREA_MM2 = 20.0
#: Slices at least this thick are the mean of three planes (partial volume).
THICK_MM = 4.0


@dataclass
class StudyPlan:
    """Everything needed to render a study's slices deterministically."""

    size: int
    spacing: float  # mm per pixel
    n_slices: int
    thickness: float  # slice spacing (mm)
    z_start: float  # scanner height of the first slice (the head's centre is at 0)
    head: Head
    scanner: Scanner
    confounders: Confounders
    lesions: list[Lesion] = field(default_factory=list)
    seed: int = 0
    noise_scale: float = 1.0  # thin slices are noisier

    def slice_z(self, k: int) -> float:
        return self.z_start + k * self.thickness

    @property
    def warp(self) -> Warp:
        return mass_effect(self.lesions)


def plan_study(
    rng: np.random.Generator,
    size: int = 512,
    positive: bool | None = None,
    lesion_count: int | None = None,
) -> StudyPlan:
    """Draw a study: a head, its confounders, the scanner, the slices and (if positive)
    1-3 hemorrhages."""
    head = draw_head(rng)
    fov = rng.uniform(2 * head.b + 40, 2 * head.b + 90)
    n_slices = int(rng.integers(24, 61))
    bottom = -rng.uniform(0.95, 1.3) * head.c
    top = head.c + head.skull + head.scalp + rng.uniform(-4, 8)
    thickness = (top - bottom) / n_slices
    plan = StudyPlan(
        size=size,
        spacing=fov / size,
        n_slices=n_slices,
        thickness=thickness,
        z_start=bottom + thickness / 2,
        head=head,
        scanner=draw_scanner(rng),
        confounders=draw_confounders(rng, head),
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


def resliced(plan: StudyPlan, n_slices: int) -> StudyPlan:
    """The same study cut into ``n_slices`` slices over the same range."""
    top = plan.slice_z(plan.n_slices - 1) + plan.thickness / 2
    bottom = plan.z_start - plan.thickness / 2
    thickness = (top - bottom) / n_slices
    return dataclasses.replace(
        plan, n_slices=n_slices, thickness=thickness, z_start=bottom + thickness / 2
    )


def draw_lesion(rng: np.random.Generator, subtype: str, plan: StudyPlan) -> Lesion:
    """One hemorrhage of ``subtype`` in ``plan``'s head."""
    return _draw(rng, subtype, plan.head)


@dataclass
class Grid:
    """Scanner coordinates (mm) of a study's pixels, shared by all its slices."""

    x: np.ndarray  # along the image's columns
    y: np.ndarray  # along its rows (+y posterior, as in DICOM's LPS)
    fov: np.ndarray  # inside the scanner's circular field of view
    radius2: np.ndarray  # squared distance from the centre, as a share of the field's radius

    @classmethod
    def for_plan(cls, plan: StudyPlan) -> Grid:
        half = (plan.size - 1) / 2
        axis = ((np.arange(plan.size, dtype=np.float32) - half) * plan.spacing).astype(np.float32)
        x, y = np.meshgrid(axis, axis)
        radius2 = (x**2 + y**2) / np.float32((half * plan.spacing) ** 2)
        return cls(x=x, y=y, fov=radius2 <= 1, radius2=radius2.astype(np.float32))


@dataclass
class Plane:
    hu: np.ndarray
    masks: dict[str, np.ndarray]
    petrous: np.ndarray
    metal: np.ndarray


def render_plane(plan: StudyPlan, grid: Grid, z: float, warp: Warp) -> Plane:
    """The anatomy, confounders and blood of the plane at scanner height ``z`` (no scanner
    effects yet)."""
    head = plan.head
    p = Coords.of_slice(head, grid.x, grid.y, z)
    hu = np.full(grid.x.shape, -1000.0, dtype=np.float32)
    v = vault(head, p)
    body, soft = paint_skull(head, p, v, hu)
    petrous = paint_base(head, p, v, hu, body, soft)
    masks: dict[str, np.ndarray] = {}
    if v.cavity.any():
        brain = paint_brain(head, p, v, hu, warp)
        paint_vessels(head, p, v, hu)
        paint_calcifications(plan.confounders, p, hu)
        for lesion in plan.lesions:
            mask = lesion_mask(lesion, head, p, v, brain)
            if mask.any():
                paint_lesion(lesion, p, v, mask, hu)
                masks[lesion.subtype] = masks.get(lesion.subtype, np.zeros_like(mask)) | mask
    metal = paint_metal(plan.confounders, head, p, hu)
    return Plane(hu, masks, petrous & (hu > 1000), metal)


def render_slice(plan: StudyPlan, k: int, grid: Grid) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """HU (float32, H x W) of slice ``k`` and the masks of the subtypes present on it."""
    z = plan.slice_z(k)
    rng = np.random.default_rng([plan.seed, k])
    warp = plan.warp
    offsets = (
        (-plan.thickness / 3, 0.0, plan.thickness / 3) if plan.thickness >= THICK_MM else (0.0,)
    )
    planes = [render_plane(plan, grid, z + dz, warp) for dz in offsets]
    middle = planes[len(planes) // 2]
    hu = np.mean([pl.hu for pl in planes], axis=0).astype(np.float32)
    conf = plan.confounders
    if middle.petrous.any():
        scan.hounsfield_bar(hu, grid.x, grid.y, middle.petrous, conf.streaks)
    if middle.metal.any():
        scan.metal_streaks(hu, grid.x, grid.y, middle.metal)
    paint_headrest(conf, plan.head, grid.x, grid.y, hu)
    if conf.motion is not None:
        first, share, shift, angle = conf.motion
        if first <= k / plan.n_slices < first + share:
            hu = scan.motion_ghost(hu, shift / plan.spacing, angle)
    sc = plan.scanner
    if plan.noise_scale != 1.0:
        sc = scan.Scanner(**{**sc.__dict__, "noise_hu": sc.noise_hu * plan.noise_scale})
    hu = scan.finish(sc, hu, grid.radius2, plan.spacing, rng)
    hu[~grid.fov] = -1000.0
    min_pixels = MIN_LESION_AREA_MM2 / plan.spacing**2
    masks = {name: m for name, m in middle.masks.items() if m.sum() >= min_pixels}
    return hu, {name: masks[name] for name in SUBTYPES if name in masks}
