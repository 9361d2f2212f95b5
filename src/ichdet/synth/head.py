"""A phantom patient's head: its size, age, tissue densities and pose, drawn once per study.

The head has its own frame (mm): X to the patient's left, Y posterior, Z superior (DICOM's LPS),
the origin at the centre of the brain's cavity. The scanner sees the head turned and shifted
(:class:`Pose`); every structure is a 3D shape in the head frame, so a slice cuts it wherever the
pose puts it, and neighbouring slices agree. Pure numpy; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Pose:
    """How the head lies in the scanner: rotations (rad) and the head centre's position (mm)."""

    yaw: float = 0.0  # about the scanner's z (head turned left/right)
    roll: float = 0.0  # about y (head tilted to a shoulder)
    pitch: float = 0.0  # about x (chin up or down)
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def matrix(self) -> np.ndarray:
        """R with scanner = R @ head + shift."""
        cy, sy = math.cos(self.yaw), math.sin(self.yaw)
        cr, sr = math.cos(self.roll), math.sin(self.roll)
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
        ry = np.array([[cr, 0, sr], [0, 1, 0], [-sr, 0, cr]])
        rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        return rz @ ry @ rx


@dataclass(frozen=True)
class Head:
    """Anatomy and densities of one patient (all lengths in mm, densities in HU)."""

    a: float  # brain cavity semi-axis, left-right
    b: float  # ... anterior-posterior
    c: float  # ... height of the vertex above the origin
    skull: float  # skull thickness
    scalp: float
    age: float  # years: sulci and ventricles widen, calcifications become common
    grey_hu: float
    white_hu: float
    csf_hu: float
    venous_hu: float  # blood in vessels and sinuses (hematocrit): a look-alike of fresh blood
    dura_hu: float  # falx and tentorium: slightly dense folds
    bone_hu: float  # dense tables of the skull
    gyrus_mm: float  # period of the cortical folds
    folds: tuple[tuple[float, ...], ...]  # three random fold directions and phases
    pose: Pose

    @property
    def atrophy(self) -> float:
        """0 at 20 years, 1 at 90: how far sulci and ventricles have widened."""
        return float(np.clip((self.age - 20) / 70, 0, 1))

    @property
    def ventricle(self) -> tuple[float, float, float]:
        """Semi-axes of a lateral ventricle's body (width, length, height)."""
        return (4.0 + 5.0 * self.atrophy, 0.30 * self.b, 0.15 * self.c)


def draw_head(rng: np.random.Generator) -> Head:
    age = float(rng.uniform(18, 92))
    folds = tuple(
        tuple(float(v) for v in (*_unit(rng), *_unit(rng), rng.uniform(0, 2 * math.pi)))
        for _ in range(3)
    )
    pose = Pose(
        yaw=math.radians(rng.normal(0, 6)),
        roll=math.radians(rng.normal(0, 4)),
        pitch=math.radians(rng.uniform(-12, 10)),
        shift=(rng.normal(0, 4), rng.normal(0, 7), 0.0),
    )
    return Head(
        a=rng.uniform(62, 72),
        b=rng.uniform(80, 92),
        c=rng.uniform(68, 80),
        skull=rng.uniform(5.0, 8.5),
        scalp=rng.uniform(3.0, 7.0),
        age=age,
        grey_hu=rng.uniform(34, 42),
        white_hu=rng.uniform(24, 31),
        csf_hu=rng.uniform(0, 12),
        venous_hu=rng.uniform(40, 58),
        dura_hu=rng.uniform(40, 60),
        bone_hu=rng.uniform(1300, 1900),
        gyrus_mm=rng.uniform(13, 19),
        folds=folds,
        pose=pose,
    )


def _unit(rng: np.random.Generator) -> tuple[float, float, float]:
    v = rng.standard_normal(3)
    v /= np.linalg.norm(v)
    return float(v[0]), float(v[1]), float(v[2])


@dataclass
class Coords:
    """Head-frame coordinates of one slice's pixels (float32 arrays, H x W)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    _z_range: tuple[float, float] | None = field(default=None, init=False, repr=False)

    @classmethod
    def of_slice(cls, head: Head, x: np.ndarray, y: np.ndarray, z: float) -> Coords:
        """Head coordinates of the scanner points (x, y, z): head = R^T (scanner - shift)."""
        r = head.pose.matrix()
        dx, dy = x - np.float32(head.pose.shift[0]), y - np.float32(head.pose.shift[1])
        dz = np.float32(z - head.pose.shift[2])
        axes = [
            (np.float32(r[0, i]) * dx + np.float32(r[1, i]) * dy + np.float32(r[2, i]) * dz)
            for i in range(3)
        ]
        return cls(*axes)

    @property
    def z_range(self) -> tuple[float, float]:
        """The lowest and highest head z on the slice (computed once)."""
        if self._z_range is None:
            self._z_range = (float(self.z.min()), float(self.z.max()))
        return self._z_range

    def misses(self, low: float, high: float) -> bool:
        """True when no pixel of the slice has a head z within [low, high]."""
        z0, z1 = self.z_range
        return high < z0 or low > z1


#: What :func:`ellipsoid` gives for a slice that misses it by far: outside every threshold
#: the phantom compares it with (all <= 1.25^2).
FAR = 4.0


def ellipsoid(p: Coords, center: tuple[float, ...], axes: tuple[float, ...]) -> np.ndarray:
    """(normalised radius)^2 of an axis-aligned ellipsoid: < 1 inside. A slice that passes more
    than 1.25 semi-axes above or below it gets ``FAR`` everywhere, without the arithmetic."""
    reach = 1.25 * axes[2]
    if p.misses(center[2] - reach, center[2] + reach):
        return np.full(p.z.shape, FAR, np.float32)
    return (
        ((p.x - center[0]) / axes[0]) ** 2
        + ((p.y - center[1]) / axes[1]) ** 2
        + ((p.z - center[2]) / axes[2]) ** 2
    )


def tube(p: Coords, start: tuple[float, ...], end: tuple[float, ...], radius: float) -> np.ndarray:
    """The points within ``radius`` mm of the segment start-end (a capsule)."""
    if p.misses(min(start[2], end[2]) - radius, max(start[2], end[2]) + radius):
        return np.zeros(p.z.shape, bool)
    s, e = np.asarray(start, np.float32), np.asarray(end, np.float32)
    d = e - s
    t = ((p.x - s[0]) * d[0] + (p.y - s[1]) * d[1] + (p.z - s[2]) * d[2]) / float(d @ d)
    t = np.clip(t, 0, 1)
    distance2 = (
        (p.x - s[0] - t * d[0]) ** 2 + (p.y - s[1] - t * d[1]) ** 2 + (p.z - s[2] - t * d[2]) ** 2
    )
    return np.sqrt(distance2) < radius


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * v))
