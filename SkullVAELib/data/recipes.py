"""The defect recipes: one cranial and one facial, with every parameter in one place.

Three users draw them: ``make-defects`` and the evaluation (:mod:`.defects`, numpy, on any patient
grid in physical LPS space), the training augmentation (:mod:`.augment`, on the model grid) and
the learned refiner's sampler (:mod:`SkullVAELib.implant.learned.train`, on its LPS grid); the last
two draw with :mod:`.regions` (torch, on regular grids). This module imports neither torch nor
numpy. Lengths in mm, in LPS (+x left, +y posterior, +z superior); ranges are uniform draws (low, high).

* Cranial: a site on the outer upper vault (a random side, ``azimuth_deg`` from the lateral axis,
  ``elevation_deg`` above the horizontal through mid-height), the outward normal there, and in the
  tangent frame either a SkullFix box with edge cylinders, cut from ``cut_mm[0]`` inside to
  ``cut_mm[1]`` outside along the normal, a SkullBreak smooth union of balls, or an irregular
  outline (a star-shaped curve of random low Fourier orders, possibly elongated: :mod:`.outline`)
  cut along the normal like the box.
* Facial: a slab ``depth_mm`` back from the most anterior bone (min y), over the lower ``height``
  of the skull's height (z) and a ``width`` of its width (x) placed at random within it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from SkullVAELib.core.errors import SkullVAEError

CRANIAL_STYLES = ("skullfix", "skullbreak", "irregular")


@dataclass(frozen=True)
class CranialRecipe:
    """The cranial defect's parameters (see the module docstring)."""

    azimuth_deg: float = 50.0  # ± from the lateral axis towards front / back
    elevation_deg: tuple[float, float] = (25.0, 65.0)
    site_cone_deg: float = 4.0  # the site: the farthest bone within this angle of the drawn ray
    box_half_mm: tuple[float, float] = (22.0, 42.0)  # SkullFix: the box's two half-sides
    cylinders: tuple[int, int] = (2, 4)  # SkullFix: cylinders on the box's edges (inclusive)
    cylinder_radius_mm: tuple[float, float] = (8.0, 15.0)
    cut_mm: tuple[float, float] = (-30.0, 15.0)  # SkullFix: along the normal, inside and outside
    balls: tuple[int, int] = (3, 6)  # SkullBreak: balls in the union (inclusive)
    ball_offset_mm: float = 20.0  # SkullBreak: ± of a ball's centre along the tangents
    ball_depth_mm: tuple[float, float] = (-6.0, -2.0)  # SkullBreak: its centre along the normal
    ball_radius_mm: tuple[float, float] = (14.0, 26.0)
    smooth_mm: float = 4.0  # SkullBreak: the soft minimum's width (log-sum-exp)
    outline_radius_mm: tuple[float, float] = (22.0, 42.0)  # irregular: the mean radius R (the box half-sides)
    outline_elongation: tuple[float, float] = (1.0, 1.6)  # irregular: long / short axis (area kept)
    outline_orders: tuple[int, int] = (3, 5)  # irregular: Fourier orders 2 … K, K drawn (inclusive)
    outline_amplitude: tuple[float, float] = (0.15, 0.35)  # irregular: order k's, divided by √(k / 2)
    outline_clip: tuple[float, float] = (0.3, 1.5)  # irregular: the radius stays within these fractions of R
    reach_mm: float = 110.0  # no shape reaches further from the site (lets the numpy drawing skip bone)


@dataclass(frozen=True)
class FacialRecipe:
    """The facial slab's parameters (see the module docstring); height and width are fractions."""

    depth_mm: tuple[float, float] = (44.0, 44.0)
    height: tuple[float, float] = (0.45, 0.60)
    width: tuple[float, float] = (0.60, 1.00)

    def __post_init__(self) -> None:
        values = (*self.depth_mm, *self.height, *self.width)
        if not all(math.isfinite(v) for v in values) or min(values) <= 0 or max(*self.height, *self.width) > 1:
            raise SkullVAEError(f"a facial defect needs depths > 0 and fractions in (0, 1], got {self}")


CRANIAL = CranialRecipe()
#: the augmentation's: a model grid's voxels (≈ 4–7 mm) leave fewer bone voxels near the ray
CRANIAL_MODEL_GRID = replace(CRANIAL, site_cone_deg=6.0)
FACIAL = FacialRecipe()  # make-defects, the evaluation and the augmentation
#: the learned refiner's training draws: wider ranges around FACIAL, so that it learns faces, not one box
FACIAL_WIDE = FacialRecipe(depth_mm=(34.0, 54.0), height=(0.40, 0.65), width=(0.55, 1.00))
