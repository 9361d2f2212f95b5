"""Where a slice lies in a mask volume: pixels to voxels by position and orientation.

A DICOM slice's pixel (row r, column c) lies at ``P + c * dc * X + r * dr * Y`` in patient
coordinates (LPS; P = ImagePositionPatient, X/Y = ImageOrientationPatient, dr/dc = PixelSpacing).
A NIfTI volume maps voxels to RAS by its affine. A mask fits a slice when the slice's pixel grid
falls on the volume's voxel grid: one pixel step is one voxel step along one axis, and the
slice's pixels land on voxel centres inside the volume. Nothing depends on file order or
InstanceNumber, so reversed or shuffled series, tilted gantries (a sheared affine) and thin
series join the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: How far (in voxels) a pixel centre may sit from a voxel centre and still be that voxel.
TOLERANCE = 0.1
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class MaskMismatch(ValueError):
    """A mask volume whose grid does not match a slice (another series, resampled, cropped)."""


@dataclass(frozen=True)
class SliceGeometry:
    position: tuple[float, float, float]  #: ImagePositionPatient (LPS, mm)
    orientation: tuple[float, ...]  #: ImageOrientationPatient: row direction, column direction
    spacing: tuple[float, float]  #: PixelSpacing: between rows, between columns (mm)
    shape: tuple[int, int]  #: rows, columns

    def patient_points(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """LPS coordinates (N x 3) of pixel centres (row, column)."""
        x = np.asarray(self.orientation[:3], float)
        y = np.asarray(self.orientation[3:], float)
        p = np.asarray(self.position, float)
        return p + np.outer(columns * self.spacing[1], x) + np.outer(rows * self.spacing[0], y)


def voxel_points(geometry: SliceGeometry, affine: np.ndarray, rows, columns) -> np.ndarray:
    """Voxel coordinates (N x 3, continuous) of a slice's pixel centres in a NIfTI volume."""
    ras = geometry.patient_points(np.asarray(rows, float), np.asarray(columns, float))
    ras = ras @ _LPS_TO_RAS.T
    inverse = np.linalg.inv(np.asarray(affine, float))
    return ras @ inverse[:3, :3].T + inverse[:3, 3]


def _grid(geometry: SliceGeometry, affine: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(voxel of pixel (0, 0), [(axis, sign) of one row step, (axis, sign) of one column step])."""
    corners = voxel_points(geometry, affine, [0, 1, 0], [0, 0, 1])
    origin, row_step, column_step = corners[0], corners[1] - corners[0], corners[2] - corners[0]
    axes = []
    for step, name in ((row_step, "row"), (column_step, "column")):
        axis = int(np.argmax(np.abs(step)))
        unit = np.zeros(3)
        unit[axis] = np.sign(step[axis])
        if np.abs(step - unit).max() > TOLERANCE / max(geometry.shape):
            raise MaskMismatch(
                f"one {name} of the slice is {np.round(step, 3).tolist()} voxels of the mask, "
                "not one voxel step (resampled or another orientation)"
            )
        axes.append((axis, int(unit[axis])))
    if axes[0][0] == axes[1][0]:
        raise MaskMismatch("the slice's rows and columns run along one axis of the mask")
    return origin, axes


def sample_plane(volume: np.ndarray, affine: np.ndarray, geometry: SliceGeometry) -> np.ndarray:
    """The mask volume's voxels under a slice (rows x columns, the volume's dtype).

    Raises MaskMismatch when the grids differ or the slice lies outside the volume."""
    if volume.ndim != 3:
        raise MaskMismatch(f"a mask volume has 3 dimensions, not {volume.ndim}")
    origin, ((row_axis, row_sign), (column_axis, column_sign)) = _grid(geometry, affine)
    if np.abs(origin - np.round(origin)).max() > TOLERANCE:
        raise MaskMismatch(
            f"the slice's first pixel falls between voxels ({np.round(origin, 2).tolist()})"
        )
    rows, columns = geometry.shape
    last_row, last_column = rows - 1, columns - 1
    corners = voxel_points(
        geometry, affine, [0, last_row, 0, last_row], [0, 0, last_column, last_column]
    )
    low, high = np.round(corners.min(axis=0)), np.round(corners.max(axis=0))
    if (low < 0).any() or (high > np.array(volume.shape) - 1).any():
        raise MaskMismatch(
            f"the slice reaches voxels {low.astype(int).tolist()}..{high.astype(int).tolist()}, "
            f"outside the mask's {list(volume.shape)}"
        )
    start = np.round(origin).astype(int)
    index: list[Any] = list(start)
    index[row_axis] = start[row_axis] + row_sign * np.arange(rows)[:, None]
    index[column_axis] = start[column_axis] + column_sign * np.arange(columns)[None, :]
    return volume[tuple(index)]
