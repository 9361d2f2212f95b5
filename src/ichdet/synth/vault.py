"""The skull and the cavity it closes: vault, cranial floor (anterior, middle and posterior
fossae; the posterior fossa is the vault's own bowl down to the foramen magnum), the
tentorium's surface, and how deep each point lies under the nearest wall.

The vault's inner table is an ellipsoid (longer downward, where the posterior fossa widens). The
floor is a surface in steps: the anterior fossa over the orbits, the middle fossa lower, the
posterior fossa lowest, the steps along the sphenoid wings and the petrous ridges (oblique:
further back at the sides). Distances are first-order (value over gradient): close to the true
distance within a few mm of a surface, which is where they are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ichdet.synth.head import Coords, Head, sigmoid

T = TypeVar("T", float, np.ndarray)
STEP_MM = 3.0  #: width of the floor's steps
FLOOR_MM = 5.0  #: thickness of the cranial floor's bone
#: heights of the fossae's floors and of the lowest skull, as fractions of the head's c
Z_ANTERIOR, Z_MIDDLE, Z_POSTERIOR, Z_FORAMEN = -0.30, -0.58, -1.5, -1.0


@dataclass
class Vault:
    """Where each pixel of a slice lies relative to the skull."""

    depth_in: np.ndarray  # mm inside the inner table (negative outside it)
    floor: np.ndarray  # mm above the cranial floor (negative below it)
    posterior: np.ndarray  # 0..1: behind the petrous ridges (the posterior fossa's share)
    tent: np.ndarray  # height (mm) of the tentorium above each point's (X, Y)
    cavity: np.ndarray  # inside the skull, above the floor
    depth: np.ndarray  # mm under the nearest wall (inner table or floor), in the cavity

    @property
    def infra(self) -> np.ndarray:
        """The posterior fossa below the tentorium (cerebellum, brainstem, fourth ventricle)."""
        return self.cavity & (self.posterior > 0.5) & (self.tent > 0)


def petrous_y(head: Head, ax: T) -> T:
    """Y of the petrous ridge at |X| = ax * a: further back at the sides."""
    return -0.04 * head.b + 0.34 * head.b * ax


def vault(head: Head, p: Coords) -> Vault:
    a, b, c = head.a, head.b, head.c
    cz = np.where(p.z > 0, np.float32(c), np.float32(1.3 * c))
    q = (p.x / a) ** 2 + (p.y / b) ** 2 + (p.z / cz) ** 2
    r = np.sqrt(q)
    grad = np.sqrt((p.x / a**2) ** 2 + (p.y / b**2) ** 2 + (p.z / cz**2) ** 2) / np.maximum(r, 1e-3)
    depth_in = (1 - r) / np.maximum(grad, 1e-4)
    floor, posterior = _floor(head, p)
    tent = tentorium_z(head, p) - p.z
    cavity = (depth_in > 0) & (floor > 0) & (p.z > Z_FORAMEN * c)
    depth = np.where(cavity, np.minimum(depth_in, floor), 0.0).astype(np.float32)
    return Vault(depth_in, floor, posterior, tent, cavity, depth)


def floor_z(head: Head, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(height of the cranial floor, posterior share) at head (x, y)."""
    a, b, c = head.a, head.b, head.c
    ax = np.abs(x) / a
    front = sigmoid((-0.40 * b - 0.10 * b * ax - y) / STEP_MM)
    back = sigmoid((y - petrous_y(head, ax)) / (2 * STEP_MM))
    middle = (Z_MIDDLE + 0.13 - 0.18 * np.clip(ax / 0.55, 0, 1)) * c  # the sella is higher
    z = middle + front * (Z_ANTERIOR * c - middle) + back * (Z_POSTERIOR * c - middle)
    return z, back


def _floor(head: Head, p: Coords) -> tuple[np.ndarray, np.ndarray]:
    """(height above the floor in mm, measured along its normal; posterior share). The slope
    comes from finite differences of :func:`floor_z`."""
    z, back = floor_z(head, p.x, p.y)
    gx = (floor_z(head, p.x + 0.5, p.y)[0] - z) / 0.5
    gy = (floor_z(head, p.x, p.y + 0.5)[0] - z) / 0.5
    floor = (p.z - z) / np.sqrt(1 + gx**2 + gy**2)
    return floor.astype(np.float32), back


def tentorium_z(head: Head, p: Coords) -> np.ndarray:
    """Height of the tentorium: highest at the incisura, sloping down backwards and sideways."""
    back = np.clip((p.y - 0.05 * head.b) / (0.8 * head.b), 0, 1)
    return (-0.20 * head.c - 0.28 * head.c * back - 0.14 * head.c * (p.x / head.a) ** 2).astype(
        np.float32
    )


def paint_skull(head: Head, p: Coords, v: Vault, hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scalp, vault and floor bone into ``hu``; returns the head's outline and its soft
    tissue (everything of the head outside the cavity), which the skull base then fills in."""
    outer = v.depth_in > -(head.skull + head.scalp)
    low = p.z < Z_ANTERIOR * head.c
    face = (
        low
        & (p.z > -1.7 * head.c)
        & (
            (p.x / (0.92 * head.a + head.skull)) ** 2
            + ((p.y + 0.08 * head.b) / (1.05 * head.b)) ** 2
            < 1
        )
    )
    body = (outer & (p.z > -1.15 * head.c)) | face
    hu[body] = 35.0
    # the scalp's outer part is fat
    hu[body & (v.depth_in < -(head.skull + 0.5 * head.scalp))] = -60.0
    shell = (v.depth_in <= 0) & (v.depth_in > -head.skull) & (p.z > Z_FORAMEN * head.c)
    shell &= ~(low & (p.y < -0.5 * head.b))  # the face below the anterior fossa: no vault
    u = np.clip(-v.depth_in / head.skull, 0, 1)
    hu[shell] = head.bone_hu - 0.55 * head.bone_hu * np.sin(np.pi * u[shell]) ** 2  # diploe
    plate = (v.floor <= 0) & (v.floor > -FLOOR_MM) & (v.depth_in > -head.skull)
    hu[plate] = 0.8 * head.bone_hu
    return body, body & ~v.cavity & ~shell & ~plate
