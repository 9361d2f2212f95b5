"""Below and around the cranial floor: what makes the lowest slices of a head CT look nothing
like the brain slices above them.

Orbits (globes, lenses, optic nerves, fat, bony walls), the sinuses (frontal, ethmoid, sphenoid,
maxillary: air next to bone), the nasal cavity, mastoid air cells, the petrous bones and the
clivus (dense bone), the upper neck (the atlas around the cord), the jaw with teeth. Each
structure is a 3D shape in the head frame; none of them is blood.
"""

from __future__ import annotations

import numpy as np

from ichdet.synth.head import Coords, Head, ellipsoid, tube
from ichdet.synth.vault import Vault, petrous_y

AIR, FAT, MUSCLE = -1000.0, -90.0, 45.0


def paint_base(
    head: Head, p: Coords, v: Vault, hu: np.ndarray, body: np.ndarray, soft: np.ndarray
) -> np.ndarray:
    """Fill the head below and around the floor (``body``: the head's outline, ``soft``: the
    head outside the cavity); returns the petrous bones' mask (the beam hardens between
    them). Only the globes stand out of the outline."""
    b, c = head.b, head.c
    z0, z1 = p.z_range
    hu[soft & (v.depth_in > 0)] = MUSCLE  # under the floor, inside the skull's outline
    petrous = np.zeros(hu.shape, bool)
    if z0 < -0.2 * c:
        _sinuses(head, p, hu)
        petrous = _petrous(head, p, hu)
    if z0 < -0.75 * c:
        _neck(head, p, hu)
    if z0 < -0.02 * c and z1 > -0.24 * c:  # the frontal sinus: between the frontal bone's tables
        _air_in_bone(
            hu, ellipsoid(p, (0, -b - 0.5 * head.skull, -0.12 * c), (15, 0.3 * head.skull, 12)), 1.0
        )
    if z0 < -0.2 * c:
        _orbits(head, p, hu, body)
    hu[~body & ~_globes(head, p)] = AIR
    return petrous


def _air_in_bone(hu: np.ndarray, q: np.ndarray, wall: float) -> None:
    """An air space with a bony wall: ``q`` the (normalised radius)^2 of its shape."""
    hu[(q < (1 + 0.15 * wall) ** 2) & (q >= 1)] = 900.0
    hu[q < 1] = AIR


def _globes(head: Head, p: Coords) -> np.ndarray:
    z = -0.43 * head.c
    return np.any(
        [
            ellipsoid(p, (side * 0.47 * head.a, -head.b - 6, z), (12, 12, 12)) < 1
            for side in (-1, 1)
        ],
        axis=0,
    )


def _orbits(head: Head, p: Coords, hu: np.ndarray, body: np.ndarray) -> None:
    b, c = head.b, head.c
    z = -0.43 * c
    for side in (-1, 1):
        x = side * 0.47 * head.a
        cone = ellipsoid(p, (x, -b + 6, z), (17, 26, 16))
        hu[(cone < 1.15) & (cone >= 1) & body] = 800.0  # the bony walls
        hu[(cone < 1) & body] = FAT
        nerve = tube(p, (x, -b - 4, z), (side * 9, -0.42 * b, z + 4), 2.5)
        hu[nerve & (cone < 1) & body] = 32.0
        globe = ellipsoid(p, (x, -b - 6, z), (12, 12, 12))
        hu[globe < 1] = 10.0
        hu[(globe < 1) & (globe > 0.88)] = 45.0  # the sclera
        hu[ellipsoid(p, (x, -b - 15.5, z), (4.5, 2.0, 4.5)) < 1] = 115.0  # the lens


def _sinuses(head: Head, p: Coords, hu: np.ndarray) -> None:
    b, c = head.b, head.c
    # ethmoid air cells between the orbits: air in a lattice of thin bony septa
    box = (np.abs(p.x) < 11) & (p.y > -b - 8) & (p.y < -0.55 * b)
    box &= (p.z > -0.58 * c) & (p.z < -0.32 * c)
    cells = np.sin(p.x * 0.9) * np.sin(p.y * 0.8) * np.sin(p.z * 0.7)
    hu[box] = np.where(np.abs(cells[box]) > 0.08, AIR, 600.0)
    _air_in_bone(hu, ellipsoid(p, (0, -0.44 * b, -0.66 * c), (15, 12, 11)), 1.0)  # sphenoid
    for side in (-1, 1):  # maxillary sinuses, lower and to the sides
        _air_in_bone(hu, ellipsoid(p, (side * 22, -b + 22, -0.92 * c), (12, 14, 16)), 1.0)
    nasal = (np.abs(p.x) < 11) & (p.y < -0.62 * b) & (p.y > -b - 14)
    nasal &= (p.z < -0.62 * c) & (p.z > -1.25 * c)
    hu[nasal] = AIR
    hu[nasal & (np.abs(p.x) < 1.0)] = 300.0  # the septum
    turbinate = nasal & (np.abs(np.abs(p.x) - 8) < 2.5) & (np.sin(p.z * 0.35) > 0.3)
    hu[turbinate] = 30.0


def _petrous(head: Head, p: Coords, hu: np.ndarray) -> np.ndarray:
    """Petrous bones along the ridges, mastoid air cells behind them, the clivus between."""
    a, b, c = head.a, head.b, head.c
    petrous = np.zeros(hu.shape, bool)
    for side in (-1, 1):
        lateral = (side * 0.88 * a, petrous_y(head, 0.88) + 6, -0.66 * c)
        medial = (side * 0.2 * a, petrous_y(head, 0.2) + 4, -0.6 * c)
        bone = tube(p, lateral, medial, 8.0)
        hu[bone] = 1.15 * head.bone_hu
        petrous |= bone
        mastoid = ellipsoid(p, (side * (a - 2), 0.42 * b, -0.74 * c), (10, 13, 12)) < 1
        honeycomb = np.sin(p.x * 1.1) * np.sin(p.y * 1.3) * np.sin(p.z * 1.2) > -0.1
        hu[mastoid] = np.where(honeycomb[mastoid], AIR, 900.0)
    clivus = tube(p, (0, -0.24 * b, -0.6 * c), (0, 0.04 * b, -0.98 * c), 6.5)
    hu[clivus] = 0.7 * head.bone_hu
    return petrous


def _neck(head: Head, p: Coords, hu: np.ndarray) -> None:
    """The atlas ring around the cord, the jaw and teeth at the bottom of the scan."""
    a, b, c = head.a, head.b, head.c
    below = p.z < -1.02 * c
    ring = np.hypot(p.x, (p.y - 0.18 * b) / 1.2)
    hu[below & (ring > 12) & (ring < 17) & (np.abs(p.z + 1.12 * c) < 6)] = 700.0
    hu[below & (ring < 8)] = 30.0  # the cord
    arch = np.hypot(p.x / (0.6 * a), (p.y + 0.55 * b) / (0.45 * b))
    jaw = (np.abs(arch - 1) < 0.09) & (p.y < -0.45 * b) & (p.z < -1.25 * c) & (p.z > -1.55 * c)
    hu[jaw] = 1.4 * head.bone_hu
