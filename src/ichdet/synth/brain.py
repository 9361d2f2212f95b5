"""What fills the cavity: cortex folded into gyri and sulci, white matter, deep grey nuclei,
ventricles, cisterns and fissures, the falx and the tentorium, the cerebellum with its folia and
the brainstem. Age widens sulci, fissures and ventricles and brings periventricular low density.

A large bleed pushes the brain over: :class:`Warp` moves the supratentorial structures sideways
(a midline shift), squeezes the ventricle on the bleed's side and effaces its sulci.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ichdet.synth.head import Coords, Head, ellipsoid, tube
from ichdet.synth.vault import Vault, tentorium_z


@dataclass(frozen=True)
class Warp:
    """Mass effect of the study's bleeds: the midline moves ``shift`` mm away from the mass."""

    shift: float = 0.0
    side: int = 1  # the side of the mass (+1 left, -1 right in the head frame)
    effect: float = 0.0  # 0..1: how much the ventricle and sulci on that side are squeezed


@dataclass
class Brain:
    """The spaces a bleed fills or respects (masks on the slice)."""

    p: Coords  # head coordinates with the mass effect applied (the brain's own frame)
    sulci: np.ndarray  # CSF over the convexity and in the sulci
    ventricles: dict[str, np.ndarray]  # "left", "right", "third", "fourth"
    cisterns: np.ndarray  # basal cisterns and sylvian fissures
    fissure: np.ndarray  # the interhemispheric fissure
    parenchyma: np.ndarray  # brain tissue (no CSF)


def paint_brain(head: Head, p: Coords, v: Vault, hu: np.ndarray, warp: Warp) -> Brain:
    a = head.a
    supra = v.cavity & ~v.infra
    # the brain's own x: structures appear moved toward -side, the farther from the skull the more
    xw = p.x + warp.shift * warp.side * np.exp(-(p.x**2) / (2 * (0.45 * a) ** 2))
    pw = Coords(np.where(supra, xw, p.x).astype(np.float32), p.y, p.z)
    hu[v.cavity] = head.white_hu
    sulci = _cortex(head, pw, v, hu, supra, warp)
    _deep_grey(head, pw, hu, supra)
    ventricles = _ventricles(head, pw, v, hu, warp)
    cisterns, fissure = _csf_spaces(head, pw, v, hu, supra)
    _infratentorial(head, p, v, hu, ventricles)
    _dura(head, pw, v, hu, supra)
    csf = sulci | cisterns | fissure | np.any(list(ventricles.values()), axis=0)
    return Brain(pw, sulci, ventricles, cisterns, fissure, v.cavity & ~csf)


def folds(head: Head, p: Coords) -> np.ndarray:
    """A smooth random field whose zero set meanders like the sulci (values about -3..3)."""
    w = 2 * math.pi / head.gyrus_mm
    field = np.zeros_like(p.x)
    for n1, n2, n3, m1, m2, m3, phase in head.folds:
        bend = 1.2 * np.sin(0.7 * w * (m1 * p.x + m2 * p.y + m3 * p.z) + phase)
        field += np.sin(w * (n1 * p.x + n2 * p.y + n3 * p.z) + bend + 2 * phase)
    return field


def pixel_mm(p: Coords) -> float:
    """The slice's pixel size (mm), from the coordinates of two neighbouring pixels."""
    if p.x.shape[1] < 2:
        return 1.0
    return float(np.hypot(p.x[0, 1] - p.x[0, 0], p.y[0, 1] - p.y[0, 0]))


def _cortex(
    head: Head, p: Coords, v: Vault, hu: np.ndarray, supra: np.ndarray, warp: Warp
) -> np.ndarray:
    """Grey ribbon, sulci (wider with age, effaced next to a mass) and the CSF under the skull.
    A sulcus thinner than a pixel only darkens it: CSF is blended by the share it covers."""
    above_tent = np.where(v.posterior > 0.5, -v.tent, np.float32(1e3))
    depth = np.where(supra, np.minimum(v.depth, above_tent), 0)
    g = np.abs(folds(head, p))
    width = 0.12 + 0.5 * head.atrophy  # dimensionless half-width of a sulcus in the field
    width_here = np.where(
        np.sign(p.x) == warp.side, np.float32(width * (1 - 0.8 * warp.effect)), np.float32(width)
    )
    deep = 14.0 + 6 * head.atrophy
    hu[supra & (((g < width_here + 0.5) & (depth < deep + 3)) | (depth < 3.0))] = head.grey_hu
    pixel = pixel_mm(p)
    step = 1.2 * 2 * math.pi / head.gyrus_mm * pixel  # how much the field changes per pixel
    cover = np.clip((width_here - g) / step + 0.5, 0, 1) * (depth < deep)
    surface = 0.6 + 2.0 * head.atrophy * (1 - warp.effect)
    cover = np.maximum(cover, np.clip((surface - depth) / pixel + 0.5, 0, 1))
    cover = np.where(supra, cover, 0).astype(np.float32)
    hu += cover * (head.csf_hu - hu)
    return cover > 0.5


def _deep_grey(head: Head, p: Coords, hu: np.ndarray, supra: np.ndarray) -> None:
    a, b, c = head.a, head.b, head.c
    va = head.ventricle[0]
    z0, z1 = p.z_range
    if z1 < -0.3 * c or z0 > 0.25 * c:
        return
    value = head.grey_hu - 2
    for side in (-1, 1):
        for center, axes in (
            ((side * (va + 7), -0.3 * b, 0.04 * c), (5.0, 10.0, 10.0)),  # caudate head
            ((side * 0.34 * a, -0.1 * b, -0.06 * c), (7.0, 0.18 * b, 0.17 * c)),  # lentiform
            ((side * 9.0, 0.06 * b, -0.03 * c), (8.0, 0.15 * b, 0.13 * c)),  # thalamus
        ):
            hu[supra & (ellipsoid(p, center, axes) < 1)] = value


def ventricle_shapes(head: Head, p: Coords, warp: Warp) -> dict[str, np.ndarray]:
    """Lateral ventricles (body, frontal, occipital and temporal horns), third and fourth."""
    b, c = head.b, head.c
    va, vb, vc = head.ventricle
    shapes = {}
    for name, side in (("left", 1), ("right", -1)):
        k = 1 - 0.55 * warp.effect if side == warp.side else 1.0
        x = side * (va * k + 2.5)
        parts = (
            ((x, -0.06 * b, 0.10 * c), (va * k, vb, vc)),
            ((side * (0.8 * va * k + 2.5), -0.3 * b, 0.03 * c), (0.9 * va * k, 0.13 * b, 0.6 * vc)),
            ((side * (va * k + 7), 0.3 * b, 0.02 * c), (1.1 * va * k, 0.16 * b, 0.55 * vc)),
            (
                (side * 0.42 * head.a, -0.1 * b, -0.33 * c),
                (2 + 0.3 * va * k, 0.15 * b, 3 + 0.2 * va),
            ),
        )
        shapes[name] = np.any([ellipsoid(p, ce, ax) < 1 for ce, ax in parts], axis=0)
    width = 1.2 + 0.45 * va
    shapes["third"] = ellipsoid(p, (0, -0.08 * b, -0.12 * c), (width, 0.15 * b, 0.11 * c)) < 1
    shapes["fourth"] = ellipsoid(p, (0, 0.3 * b, -0.64 * c), (6 + 0.3 * va, 4.0, 8.0)) < 1
    return shapes


def _ventricles(
    head: Head, p: Coords, v: Vault, hu: np.ndarray, warp: Warp
) -> dict[str, np.ndarray]:
    shapes = {name: mask & v.cavity for name, mask in ventricle_shapes(head, p, warp).items()}
    lateral = shapes["left"] | shapes["right"]
    if head.atrophy > 0.4:  # periventricular low density of small-vessel disease
        va, vb, vc = head.ventricle
        halo = ellipsoid(p, (0, -0.06 * head.b, 0.1 * head.c), (2.4 * va + 8, vb + 10, vc + 8))
        hu[v.cavity & (halo < 1) & ~lateral] -= 10.0 * (head.atrophy - 0.4)
    for mask in shapes.values():
        hu[mask] = head.csf_hu
    return shapes


def _csf_spaces(
    head: Head, p: Coords, v: Vault, hu: np.ndarray, supra: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Basal cisterns, sylvian fissures and the interhemispheric fissure."""
    a, b, c = head.a, head.b, head.c
    widen = head.atrophy
    callosum = 0.25 * c * (1 - (p.y / (0.42 * b)) ** 2) - 0.05 * c
    fissure = supra & (np.abs(p.x) < 1.0 + 2.0 * widen) & (p.z > callosum)
    cisterns = np.zeros_like(fissure)
    if p.z_range[0] < 0.0:
        star = ellipsoid(p, (0, -0.2 * b, -0.42 * c), (16, 10, 5)) < 1
        ambient = np.abs(np.hypot(p.x, p.y - 0.05 * b) - 13) < 1.5 + 2 * widen
        ambient &= (p.z > -0.48 * c) & (p.z < -0.2 * c)
        quadrigeminal = ellipsoid(p, (0, 0.22 * b, -0.25 * c), (8, 5, 6)) < 1
        sylvian = np.zeros_like(fissure)
        for side in (-1, 1):  # a sheet from the suprasellar cistern out and a little forward
            flat = Coords(p.x, p.y, p.x * 0)  # a vertical sheet: the distance in the plane
            start, end = (side * 14, -0.18 * b, 0), (side * 0.85 * a, -0.3 * b, 0)
            sylvian |= tube(flat, start, end, 1.0 + 2 * widen)
        sylvian &= (p.z > -0.45 * c) & (p.z < -0.08 * c)
        cisterns = v.cavity & (star | ambient | quadrigeminal | sylvian)
    hu[fissure | cisterns] = head.csf_hu
    return cisterns, fissure


def _infratentorial(
    head: Head, p: Coords, v: Vault, hu: np.ndarray, ventricles: dict[str, np.ndarray]
) -> None:
    """Cerebellum with folia and a white core, brainstem, the fourth ventricle, cisterna magna."""
    b, c = head.b, head.c
    infra = v.infra
    if not infra.any():
        return
    mix = 0.5 * (head.grey_hu + head.white_hu)
    folia = np.sin(2 * np.pi * (0.8 * p.z + 0.3 * p.y) / 4.0)
    hu[infra] = (mix + 3 + 3.0 * folia)[infra]
    hu[infra & (v.depth > 16)] = head.white_hu + 2
    hu[infra & (v.depth < 8) & (np.abs(folia) < 0.15 + 0.25 * head.atrophy)] = head.csf_hu
    stem = tube(p, (0, 0.06 * b, -0.22 * c), (0, 0.16 * b, -1.0 * c), 12.0)
    hu[v.cavity & stem] = mix + 4
    prepontine = (tube(p, (0, -0.06 * b, -0.4 * c), (0, 0.04 * b, -0.95 * c), 4.0)) & ~stem
    hu[v.cavity & prepontine] = head.csf_hu
    magna = ellipsoid(p, (0, 0.8 * b, -0.86 * c), (10, 8, 10)) < 1
    hu[infra & magna] = head.csf_hu
    hu[ventricles["fourth"]] = head.csf_hu


def _dura(head: Head, p: Coords, v: Vault, hu: np.ndarray, supra: np.ndarray) -> None:
    """The falx (midline, above the callosum) and the tentorium (over the posterior fossa),
    thinner than a pixel: blended by the share of the pixel they cover."""
    b, c = head.b, head.c
    pixel = (
        float(np.hypot(p.x[0, 1] - p.x[0, 0], p.y[0, 1] - p.y[0, 0])) if p.x.shape[1] > 1 else 1.0
    )
    callosum = 0.25 * c * (1 - (p.y / (0.42 * b)) ** 2) + 0.02 * c
    _sheet(hu, np.abs(p.x), supra & (p.z > callosum), head.dura_hu, pixel)
    notch = (np.abs(p.x) < 14) & (p.y < 0.4 * b)
    where = v.cavity & (v.posterior > 0.5) & ~notch
    _sheet(hu, np.abs(p.z - tentorium_z(head, p)), where, head.dura_hu, pixel)


def _sheet(
    hu: np.ndarray, distance: np.ndarray, where: np.ndarray, value: float, pixel: float
) -> None:
    """A sheet 1.4 mm thick at ``distance`` 0, blended over pixels of ``pixel`` mm."""
    cover = np.clip((0.7 + pixel / 2 - distance) / pixel, 0, 1)
    cover = np.minimum(cover, 1.4 / pixel)
    band = where & (cover > 0)
    hu[band] += (cover * (value - hu))[band]
