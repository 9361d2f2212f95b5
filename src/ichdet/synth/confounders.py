"""What real normal heads carry that a naive detector takes for blood, none of it labelled.

- physiological calcifications (> 100 HU, small, where they usually are): pineal, choroid
  plexus in the atria, basal ganglia, plaques on the falx, the carotid siphons;
- dense venous sinuses and arteries (40-62 HU, tubular): superior sagittal, transverse and
  straight sinuses, the basilar and middle cerebral arteries, the cavernous sinuses;
- metal: an aneurysm clip, dental fillings (streaks follow; see ``scanner``);
- the head rest under the head, and motion in some slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ichdet.synth.head import Coords, Head, ellipsoid, tube
from ichdet.synth.vault import Vault

METAL_HU = 3071.0  #: the top of a 12-bit CT range, where metal saturates


@dataclass(frozen=True)
class Confounders:
    calcifications: tuple[tuple[float, ...], ...]  # (x, y, z, radius, HU) in the head frame
    clip: tuple[float, float, float] | None  # an aneurysm clip's centre
    dental: bool  # fillings in the teeth (where the scan reaches the jaw)
    headrest: tuple[float, float, float] | None  # (gap mm, thickness mm, HU)
    motion: tuple[float, float, float, float] | None  # (first slice share, share, shift mm, angle)
    streaks: float  # strength of the beam hardening between the petrous bones (HU)


def draw_confounders(rng: np.random.Generator, head: Head) -> Confounders:
    a, b, c = head.a, head.b, head.c
    old = head.atrophy
    va = head.ventricle[0]
    found: list[tuple[float, ...]] = []

    def maybe(p: float, x: float, y: float, z: float, radius: tuple, hu: tuple) -> None:
        if rng.random() < p:
            found.append((x, y, z, rng.uniform(*radius), rng.uniform(*hu)))

    maybe(0.35 + 0.5 * old, 0.0, 0.12 * b, -0.12 * c, (1.5, 4.0), (90, 450))  # pineal
    for side in (-1, 1):
        maybe(0.3 + 0.5 * old, side * (va + 7), 0.3 * b, 0.02 * c, (1.5, 4.0), (80, 260))
        maybe(0.1 + 0.2 * old, side * 0.3 * a, -0.08 * b, -0.06 * c, (1.0, 2.5), (100, 300))
        maybe(0.15 + 0.5 * old, side * 12.0, -0.3 * b, -0.55 * c, (1.0, 2.5), (150, 500))
    if rng.random() < 0.25:  # a plaque on the falx
        found.append((0.0, rng.uniform(-0.5, 0.5) * b, rng.uniform(0.3, 0.7) * c, 2.5, 300.0))
    motion = None
    if rng.random() < 0.1:
        motion = (
            rng.uniform(0, 0.8),
            rng.uniform(0.05, 0.2),
            rng.uniform(1, 4),
            rng.uniform(0, 6.3),
        )
    return Confounders(
        calcifications=tuple(found),
        clip=(rng.choice([-1, 1]) * 12.0, -0.22 * b, -0.38 * c) if rng.random() < 0.03 else None,
        dental=bool(rng.random() < 0.4),
        headrest=(rng.uniform(3, 15), rng.uniform(1.5, 3.0), rng.uniform(120, 450))
        if rng.random() < 0.7
        else None,
        motion=motion,
        streaks=float(rng.uniform(5, 25)),
    )


def paint_vessels(head: Head, p: Coords, v: Vault, hu: np.ndarray) -> None:
    """Venous sinuses and large arteries at the density of circulating blood."""
    b, c = head.b, head.c
    dense = head.venous_hu
    sss = (v.depth_in < 7) & (np.abs(p.x) < 0.6 * (7 - v.depth_in)) & (p.z > -0.2 * c)
    transverse = (v.depth_in < 5) & (np.abs(v.tent) < 3.5) & (p.y > 0.45 * b)
    vessels = v.cavity & (sss | transverse)
    if p.z_range[0] < 0.0:
        tubes: list[tuple[tuple[float, ...], tuple[float, ...], float]] = [
            ((0, 0.35 * b, -0.16 * c), (0, 0.85 * b, -0.42 * c), 2.5),  # straight sinus
            ((0, -0.02 * b, -0.35 * c), (0, 0.06 * b, -0.9 * c), 2.0),  # basilar artery
        ]
        for side in (-1, 1):
            tubes.append(
                ((side * 6, -0.2 * b, -0.38 * c), (side * 0.42 * head.a, -0.2 * b, -0.3 * c), 1.6)
            )
            tubes.append(((side * 12, -0.36 * b, -0.56 * c), (side * 12, -0.2 * b, -0.56 * c), 4.0))
        for start, end, radius in tubes:
            vessels |= tube(p, start, end, radius)
    hu[vessels & (hu > -200) & (hu < 200)] = dense


def paint_calcifications(conf: Confounders, p: Coords, hu: np.ndarray) -> None:
    for x, y, z, radius, value in conf.calcifications:
        hu[ellipsoid(p, (x, y, z), (radius, radius, radius)) < 1] = value


def paint_metal(conf: Confounders, head: Head, p: Coords, hu: np.ndarray) -> np.ndarray:
    """Clip and fillings at the saturated top of the range; returns the metal mask."""
    metal = np.zeros(hu.shape, bool)
    if conf.clip is not None:
        metal |= ellipsoid(p, conf.clip, (4.0, 2.0, 2.5)) < 1
    if conf.dental and p.z_range[0] < -1.25 * head.c:
        for k in range(6):
            angle = -2.4 + 0.95 * k
            x, y = 0.6 * head.a * np.cos(angle), -0.55 * head.b + 0.45 * head.b * np.sin(angle)
            metal |= ellipsoid(p, (x, y, -1.38 * head.c), (3.5, 3.5, 3.0)) < 1
    hu[metal] = METAL_HU
    return metal


def paint_headrest(
    conf: Confounders, head: Head, x: np.ndarray, y: np.ndarray, hu: np.ndarray
) -> None:
    """The head rest: a curved shell behind the head, in the scanner's frame."""
    if conf.headrest is None:
        return
    gap, thickness, value = conf.headrest
    cx, cy = head.pose.shift[0], head.pose.shift[1]
    radius = head.b + head.skull + head.scalp + gap
    r = np.hypot(x - cx, (y - cy) * 0.95)
    shell = (np.abs(r - radius) < thickness / 2) & (y - cy > 0.25 * radius)
    hu[shell & (hu < -500)] = value
