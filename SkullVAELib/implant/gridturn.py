"""The rim fit's ray grid turned so that a hole keeps clear of the grid's poles.

The ray grid (:mod:`raycast`) is regular in (α, β), with its poles on the back and the front of the
head. Near a pole its cells are not neighbourhoods on the sphere: a ring ``ring`` cells wide around a
hole spans a third of the arc across the rows that it spans along them, and the grid's dilation
stops at the pole. A hole whose rim passes within a few degrees of a pole (SkullFix's own defects,
8-26° from the posterior pole as scanned, on a head pitched 15-30° chin-up) then takes its rim's
thickness from the rays its cut wall thinned, and the fill comes out thin (docs/results/issue-24-2026-12-06.md,
"A head in any pose" and "The ray grid's poles kept off the hole").

:func:`turn_off_poles` gives the smallest pitch of the grid's frame about the ray centre (a turn about
LPS x, lifting the hole) that puts every ray of the hole at least ``clearance_deg`` from both poles. :class:`GridTurn` applies it to the skull by its header only (origin and direction: the
voxels, and so the implant's grid, are the input's own) and to the mirror transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.spatial.transform import Rotation

from SkullVAELib.implant import raycast
from SkullVAELib.implant.scanedge import openings
from SkullVAELib.io.image import SkullImage

_POSTERIOR = np.array([0.0, 1.0, 0.0])  # LPS +y: the grid's row 0 (raycast.angle_grid)
_LEFT = np.array([1.0, 0.0, 0.0])  # LPS +x: the axis of a pitch, normal to the grid's seam's plane
_MAX_TURN_DEG = 90.0


@dataclass(frozen=True)
class GridTurn:
    """A rotation of the ray grid's frame about the ray centre.

    A point ``p`` (LPS mm) of the skull lies at ``rotation @ (p - centre) + centre`` in the turned frame;
    a direction ``v`` of the turned frame is ``rotation.T @ v`` in LPS.

    Attributes:
        rotation: (3, 3) proper rotation.
        centre: (3,) LPS mm, the ray centre (its own image).
    """

    rotation: np.ndarray
    centre: np.ndarray

    @property
    def degrees(self) -> float:
        """The turn's angle (degrees, ≥ 0)."""
        return float(np.degrees(np.arccos(np.clip((np.trace(self.rotation) - 1.0) / 2.0, -1.0, 1.0))))

    def affine(self) -> np.ndarray:
        """(4, 4) the turn as an LPS affine (LPS mm → turned mm)."""
        out = np.eye(4)
        out[:3, :3] = self.rotation
        out[:3, 3] = self.centre - self.rotation @ self.centre
        return out

    def skull(self, skull: SkullImage) -> SkullImage:
        """``skull``'s voxels (the same array) under the turned header: physical positions turned."""
        origin = self.rotation @ (np.asarray(skull.origin, dtype=np.float64) - self.centre) + self.centre
        return replace(skull, origin=origin, direction=self.rotation @ np.asarray(skull.direction, dtype=np.float64))

    def transform(self, transform: np.ndarray | None) -> np.ndarray | None:
        """A (4, 4) LPS transform (the mirror's) expressed in the turned frame (None stays None)."""
        if transform is None:
            return None
        turn = self.affine()
        return turn @ np.asarray(transform, dtype=np.float64) @ np.linalg.inv(turn)

    def grid_cells(self, cells: np.ndarray, step_deg: float) -> np.ndarray:
        """bool (Nα, Nβ): the cells of the turned grid nearest to the turned directions of ``cells`` (bool
        (Nα, Nβ) of the grid of ``step_deg`` in LPS)."""
        row, col, _ = raycast.nearest_cells(raycast.grid_directions(step_deg)[cells] @ self.rotation.T, step_deg)
        out = np.zeros_like(cells, dtype=bool)
        out[row, col] = True
        return out

    def openings(self, step_deg: float) -> dict[str, np.ndarray]:
        """The grid's openings (:func:`scanedge.openings`: the skull base below, the face in front) turned with
        the frame: the same directions of the head stay open, whichever frame the rays are cast in."""
        return {name: self.grid_cells(cells, step_deg) for name, cells in openings(step_deg).items()}

    def lps_cells(self, step_deg: float) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) int (Nα, Nβ): for every cell of the turned grid, the LPS grid's cell nearest to its direction
        (a map made on the LPS grid, indexed so, reads in the turned frame)."""
        dirs = raycast.grid_directions(step_deg)
        row, col, _ = raycast.nearest_cells(dirs.reshape(-1, 3) @ self.rotation, step_deg)
        return row.reshape(dirs.shape[:2]), col.reshape(dirs.shape[:2])

    def lps_up(self) -> np.ndarray:
        """(3,) LPS superior (+z) as a direction of the turned frame: what "up" is for its rays."""
        return self.rotation @ np.array([0.0, 0.0, 1.0])

    def to_lps(self, direction: np.ndarray) -> np.ndarray:
        """(3,) a direction of the turned frame in LPS."""
        return self.rotation.T @ np.asarray(direction, dtype=np.float64)


def pole_clearance_deg(cells: np.ndarray, step_deg: float) -> float:
    """The angle (degrees) between the nearer grid pole and the nearest edge of ``cells`` (bool (Nα, Nβ));
    0 when they hold a pole's row."""
    rows = np.flatnonzero(cells.any(axis=1))
    if rows.size == 0:
        return 180.0
    return float(min(rows[0], cells.shape[0] - 1 - rows[-1]) * step_deg)


def turn_off_poles(holes: Sequence, centre: np.ndarray, step_deg: float, clearance_deg: float) -> GridTurn | None:
    """The smallest pitch that puts every ray of the largest hole at least ``clearance_deg`` from both poles, or
    None when it is that far already (or there is no hole, or ``clearance_deg`` ≤ 0).

    Args:
        holes: the holes found on the grid of ``step_deg``, largest first (:func:`rimholes.find_holes`); each
            with ``cells`` bool (Nα, Nβ) and a unit mean ``direction`` (3,) in LPS. The first decides.
        centre: (3,) LPS mm, the ray centre.

    The turn is a pitch (about LPS x) that lifts the hole away from the nearer pole, in steps of the grid's
    step up to 90°; the hole's cells are turned as unit vectors, so a hole that holds the pole, or lies
    below it, is turned until all of it has left. A pitch keeps the grid's seam (the skull base's opening,
    :func:`scanedge.openings`) in the head's sagittal plane, where the foramen magnum and the cut-off
    skull base lie; a turn about any other axis moved openings off it, and they became holes. None also
    when no pitch up to 90° clears the hole.
    """
    if not holes or clearance_deg <= 0 or pole_clearance_deg(holes[0].cells, step_deg) >= clearance_deg:
        return None
    rays = raycast.grid_directions(step_deg)[holes[0].cells]
    backwards = float(np.asarray(holes[0].direction, dtype=np.float64) @ _POSTERIOR) >= 0.0
    axis = _LEFT if backwards else -_LEFT  # a pitch that lifts the hole: +y (or -y) turns towards +z
    cos_limit = np.cos(np.deg2rad(clearance_deg + step_deg / 2))  # cell centres: their edges clear it
    for degrees in np.arange(step_deg, _MAX_TURN_DEG + step_deg / 2, step_deg):
        rotation = Rotation.from_rotvec(np.deg2rad(degrees) * axis).as_matrix()
        if np.abs(rays @ rotation.T @ _POSTERIOR).max() <= cos_limit:
            return GridTurn(rotation, np.asarray(centre, dtype=np.float64).copy())
    return None
