"""Hemorrhages as 3D shapes in the head frame, with densities by age and their mass effect.

- epidural: a biconvex lens against the inner table;
- subdural: a crescent over the convexity, or along the falx or over the tentorium;
- intraparenchymal: an irregular blob (basal ganglia, thalamus, lobar, cerebellar), with an
  edema rim;
- intraventricular: blood layering in the dependent (posterior, the patient lies supine) part of
  the lateral ventricles;
- subarachnoid: in the sulci of a sector, or in the basal cisterns and sylvian fissures.

Density follows the bleed's age: hyperacute 48-60 HU, acute 60-88, subacute fading toward the
brain's density, chronic subdural darker than brain; a mixed bleed has a hematocrit level (the
cells settle posteriorly). Sizes go down to a few mm: the smallest ones are the hard cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ichdet.synth.brain import Brain, Warp
from ichdet.synth.head import Coords, Head
from ichdet.synth.vault import Vault

#: Relative frequency of subtypes among lesions (epidural rarest, as in RSNA).
SUBTYPE_FREQUENCY = {
    "subdural": 0.30,
    "intraparenchymal": 0.25,
    "subarachnoid": 0.22,
    "intraventricular": 0.16,
    "epidural": 0.07,
}
AGES = {"hyperacute": (48, 60), "acute": (60, 88), "subacute": (36, 50), "chronic": (8, 24)}
IPH_SITES = {
    "basal ganglia": ((0.3, -0.1, -0.05), 0.3),
    "thalamus": ((0.12, 0.06, -0.03), 0.12),
    "lobar": (None, 0.43),
    "cerebellum": ((0.3, 0.55, -0.66), 0.1),
    "pons": ((0.0, 0.12, -0.55), 0.05),
}


@dataclass(frozen=True)
class Lesion:
    subtype: str
    hu: float
    age: str
    site: str = ""  # subdural: convexity/falx/tentorium; subarachnoid: sulcal/cisternal
    direction: tuple[float, float, float] = (1.0, 0.0, 0.0)  # on the skull (normalised frame)
    angular_radius: float = 0.5  # rad, around ``direction``
    thickness: float = 5.0  # mm, epidural/subdural
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)  # mm, intraparenchymal
    radius: float = 10.0  # mm, intraparenchymal
    harmonics: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    sides: tuple[int, ...] = (1,)  # intraventricular: which lateral ventricles
    level: float = 0.3  # intraventricular: share of the ventricle's length filled
    hematocrit: float | None = None  # mixed: HU of the settled cells (posterior part)

    @property
    def side(self) -> int:
        x = self.center[0] if self.subtype == "intraparenchymal" else self.direction[0]
        return 1 if x >= 0 else -1


def _blood(rng: np.random.Generator, subtype: str) -> tuple[str, float, float | None]:
    ages = ["hyperacute", "acute", "subacute"] + (["chronic"] if subtype == "subdural" else [])
    weights = np.array([0.1, 0.74, 0.08] + ([0.12] if subtype == "subdural" else []))
    age = str(rng.choice(ages, p=weights / weights.sum()))
    low, high = AGES[age]
    if subtype in ("subarachnoid", "intraventricular"):
        low, high = min(low, 45), min(high, 72)  # thin layers mixed with CSF
    hu = float(rng.uniform(low, high))
    mixed = subtype in ("subdural", "intraparenchymal") and rng.random() < 0.15
    return age, hu, float(rng.uniform(65, 90)) if mixed else None


def _direction(rng: np.random.Generator, low: float, high: float) -> tuple[float, float, float]:
    phi, theta = rng.uniform(0, 2 * math.pi), rng.uniform(low, high)
    return (math.cos(phi) * math.cos(theta), math.sin(phi) * math.cos(theta), math.sin(theta))


def draw_lesion(rng: np.random.Generator, subtype: str, head: Head) -> Lesion:
    """One hemorrhage of ``subtype``, sized from a few mm to large."""
    age, hu, hematocrit = _blood(rng, subtype)
    blood = Lesion(subtype, hu=hu, age=age, hematocrit=hematocrit)
    if subtype == "epidural":
        return replace(
            blood,
            direction=_direction(rng, -0.3, 0.9),
            angular_radius=float(rng.uniform(0.15, 0.45)),
            thickness=float(rng.uniform(4, 22)),
        )
    if subtype == "subdural":
        return replace(
            blood,
            site=str(rng.choice(["convexity", "falx", "tentorium"], p=[0.78, 0.14, 0.08])),
            direction=_direction(rng, -0.2, 0.9),
            angular_radius=float(rng.uniform(0.3, 1.1)),
            thickness=float(rng.uniform(4, 7) if rng.random() < 0.2 else rng.uniform(7, 18)),
        )
    if subtype == "intraparenchymal":
        return _parenchymal(rng, head, blood)
    if subtype == "intraventricular":
        sides = (1, -1) if rng.random() < 0.4 else (int(rng.choice([-1, 1])),)
        return replace(blood, sides=sides, level=float(rng.uniform(0.08, 0.7)))
    if subtype == "subarachnoid":
        return replace(
            blood,
            site="cisternal" if rng.random() < 0.45 else "sulcal",
            direction=_direction(rng, -0.1, 1.0),
            angular_radius=float(rng.uniform(0.15, 0.6)),
        )
    raise ValueError(f"unknown subtype {subtype!r}")


def _parenchymal(rng: np.random.Generator, head: Head, blood: Lesion) -> Lesion:
    names = list(IPH_SITES)
    weights = np.array([IPH_SITES[n][1] for n in names])
    site = str(rng.choice(names, p=weights / weights.sum()))
    anchor = IPH_SITES[site][0]
    side = int(rng.choice([-1, 1]))
    if anchor is None:  # lobar: under the cortex anywhere above the tentorium
        d = _direction(rng, -0.05, 0.8)
        depth = float(rng.uniform(0.55, 0.8))
        center = (d[0] * head.a * depth, d[1] * head.b * depth, d[2] * head.c * depth)
    else:
        center = (side * anchor[0] * head.a, anchor[1] * head.b, anchor[2] * head.c)
    small = site in ("pons", "thalamus")
    return replace(
        blood,
        site=site,
        center=center,
        radius=float(rng.uniform(4, 10) if small else rng.uniform(5, 26)),
        harmonics=tuple(float(v) for v in rng.uniform(-1, 1, 4)),
    )


def mass_effect(lesions: list[Lesion]) -> Warp:
    """The midline shift the largest bleed causes (none for small ones)."""
    best = Warp()
    for lesion in lesions:
        if lesion.subtype == "intraparenchymal" and lesion.site in ("basal ganglia", "lobar"):
            effect = (lesion.radius - 11) / 15
        elif lesion.subtype == "epidural" or (
            lesion.subtype == "subdural" and lesion.site == "convexity"
        ):
            effect = (lesion.thickness - 7) / 12
        else:
            continue
        effect = float(np.clip(effect, 0, 1))
        if effect > best.effect:
            best = Warp(shift=12.0 * effect, side=lesion.side, effect=effect)
    return best


def _angle(head: Head, p: Coords, direction: tuple[float, float, float]) -> np.ndarray:
    cz = np.where(p.z > 0, np.float32(head.c), np.float32(1.3 * head.c))
    nx, ny, nz = p.x / head.a, p.y / head.b, p.z / cz
    norm = np.sqrt(nx**2 + ny**2 + nz**2) + 1e-6
    cos = (nx * direction[0] + ny * direction[1] + nz * direction[2]) / norm
    return np.arccos(np.clip(cos, -1, 1))


def lesion_mask(lesion: Lesion, head: Head, p: Coords, v: Vault, brain: Brain) -> np.ndarray:
    """The voxels of ``lesion`` on this slice."""
    kind = lesion.subtype
    if kind in ("epidural", "subdural") and lesion.site in ("", "convexity"):
        u2 = (_angle(head, p, lesion.direction) / lesion.angular_radius) ** 2
        profile = np.sqrt(np.clip(1 - u2, 0, None))
        if kind == "subdural":
            profile = np.clip(1 - u2, 0, None) ** 0.25  # a crescent: flat, then a quick taper
        return v.cavity & (v.depth_in < lesion.thickness * profile)
    if kind == "subdural":
        return _dural_fold(lesion, head, p, v, brain)
    if kind == "intraparenchymal":
        return _blob(lesion, p) & v.cavity & (v.depth > 1.5)
    if kind == "intraventricular":
        lateral = np.zeros_like(v.cavity)
        for side in lesion.sides:
            lateral |= brain.ventricles["left" if side > 0 else "right"]
        cut = 0.46 * head.b - lesion.level * 0.9 * head.b
        return lateral & (brain.p.y > cut)
    if kind == "subarachnoid":
        if lesion.site == "cisternal":
            return brain.cisterns | (brain.fissure & (p.z < 0.15 * head.c))
        sector = _angle(head, p, lesion.direction) < lesion.angular_radius
        return brain.sulci & sector & (v.depth > 1.0)  # in the sulci, not against the bone
    raise ValueError(f"unknown subtype {kind!r}")


def _dural_fold(lesion: Lesion, head: Head, p: Coords, v: Vault, brain: Brain) -> np.ndarray:
    """A subdural collection along the falx (one side) or on top of the tentorium."""
    ry, rz = lesion.angular_radius * 0.5 * head.b, lesion.angular_radius * 0.35 * head.c
    y0, z0 = lesion.direction[1] * 0.4 * head.b, 0.25 * head.c
    if lesion.site == "falx":
        u2 = ((p.y - y0) / ry) ** 2 + ((p.z - z0) / rz) ** 2
        thick = 0.4 * lesion.thickness * np.sqrt(np.clip(1 - u2, 0, None))
        side = np.sign(brain.p.x) == lesion.side
        return brain.fissure & side & (np.abs(brain.p.x) - 0.7 < thick) | (
            v.cavity & side & (np.abs(brain.p.x) < thick + 0.7) & (thick > 0) & (p.z > 0)
        )
    u2 = ((p.x - lesion.direction[0] * 0.5 * head.a) / (0.5 * head.a)) ** 2
    u2 = u2 + ((p.y - 0.6 * head.b) / (0.35 * head.b)) ** 2
    thick = 0.4 * lesion.thickness * np.sqrt(np.clip(1 - u2, 0, None))
    return v.cavity & (v.posterior > 0.5) & (v.tent < 0) & (-v.tent < thick)


def _blob(lesion: Lesion, p: Coords) -> np.ndarray:
    dx, dy, dz = p.x - lesion.center[0], p.y - lesion.center[1], p.z - lesion.center[2]
    theta = np.arctan2(dy, dx)
    h = lesion.harmonics
    radius = lesion.radius * (
        1 + 0.22 * h[0] * np.sin(2 * theta + 3 * h[1]) + 0.15 * h[2] * np.sin(3 * theta + 3 * h[3])
    )
    return dx**2 + dy**2 + (dz * 1.15) ** 2 < radius**2


def paint_lesion(lesion: Lesion, p: Coords, v: Vault, mask: np.ndarray, hu: np.ndarray) -> None:
    """Blood into ``hu``: the edema rim of a parenchymal bleed first, then the blood itself."""
    if lesion.subtype == "intraparenchymal" and lesion.age != "hyperacute":
        bigger = replace(lesion, radius=lesion.radius * 1.3 + 2)
        rim = _blob(bigger, p) & v.cavity & ~mask
        hu[rim] -= 9.0
    value = np.full(hu.shape, lesion.hu, np.float32)
    if lesion.hematocrit is not None:  # the cells settle at the back of the collection
        ys = p.y[mask]
        if ys.size:
            cut = np.quantile(ys, 0.55)
            value = np.where(p.y > cut, np.float32(lesion.hematocrit), value)
    blood = value[mask]
    if lesion.age == "chronic":
        hu[mask] = blood  # darker than brain: replaces it
    else:
        hu[mask] = np.maximum(hu[mask], blood)
