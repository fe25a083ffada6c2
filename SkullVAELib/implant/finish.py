"""Finishing an implant for manufacture: smoothing, a gap to the patient's bone, a minimum thickness.

Applied by the Completer after any source, on the implant's box only (plus the finishing's reach).
Each step is off at 0; all lengths are in mm and respect anisotropic spacing.

- ``smoothing_mm``: Gaussian smoothing of the implant's surface (σ in mm), re-thresholded at 0.5,
  with the bone as part of the solid so that the edge stays on the rim (:func:`smoothed`); the volume
  changes by at most 10 % at σ = 2 mm (checked on phantoms by the tests).
- ``min_thickness_mm``: parts thinner than this are removed (a morphological opening with a
  ball of that diameter), e.g. slivers a printer cannot build.
- ``margin_mm``: the implant is cut back until at least this gap lies between its voxels' faces and
  the bone's (for fitting in surgery): a voxel stays when its centre lies farther than ``margin_mm`` plus
  the largest voxel side from every bone voxel's centre (two touching voxels' centres are one side
  apart); applied last, so the gap always holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from SkullVAELib.core.config import MAX_FINISH_MM
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.implant.cleanup import bounding_box
from SkullVAELib.implant.postprocess import ball
from SkullVAELib.io.image import SkullImage


@dataclass(frozen=True)
class FinishSettings:
    """Finishing steps (mm; 0 = off)."""

    smoothing_mm: float = 0.0
    margin_mm: float = 0.0
    min_thickness_mm: float = 0.0

    def __post_init__(self) -> None:
        for name in ("smoothing_mm", "margin_mm", "min_thickness_mm"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= MAX_FINISH_MM):
                raise SkullVAEError(
                    f"{name.replace('_', ' ')} must be between 0 and {MAX_FINISH_MM:g} mm, got {value!r}"
                )

    @property
    def active(self) -> bool:
        return any((self.smoothing_mm, self.margin_mm, self.min_thickness_mm))


def finish_implant(implant: np.ndarray, skull: SkullImage, settings: FinishSettings) -> np.ndarray:
    """The finished implant: bool (I, J, K) on ``skull``'s grid, disjoint from its bone."""
    implant = np.asarray(implant, dtype=bool)
    if not settings.active or not implant.any():
        return implant
    spacing = np.asarray(skull.spacing, dtype=float)
    reach = settings.smoothing_mm * 3 + settings.margin_mm + settings.min_thickness_mm + 2 * spacing.max()
    box = bounding_box(implant, margin=np.ceil(reach / spacing).astype(int))
    crop, bone = implant[box].copy(), skull.mask[box]
    if settings.smoothing_mm > 0:
        crop = smoothed(crop, bone, spacing, settings.smoothing_mm)
    if settings.min_thickness_mm > 0:
        crop = ndimage.binary_opening(crop, structure=ball(settings.min_thickness_mm / 2, spacing))
    if settings.margin_mm > 0:
        # centre to centre: the faces' gap is the distance less up to one voxel side (the largest, to be sure)
        crop &= ndimage.distance_transform_edt(~bone, sampling=spacing) > settings.margin_mm + spacing.max()
    out = np.zeros(skull.shape, dtype=bool)
    out[box] = crop & ~bone
    return out


def smoothed(implant: np.ndarray, bone: np.ndarray, spacing: np.ndarray, sigma_mm: float) -> np.ndarray:
    """``implant`` (bool (I, J, K)) with its surface smoothed by a Gaussian of ``sigma_mm`` (mm; ``spacing``: mm per
    axis), re-thresholded at 0.5.

    The implant and the ``bone`` are smoothed as one solid, so the implant's edge stays on the rim and its
    surface runs on into the skull's (smoothing the implant alone read the bone as empty and pulled the edge
    back: at σ 2 mm, 39 % of the rim contact of a phantom's implant remained, at 3 mm none). The bone is
    never added to, and the implant grows only within ``sigma_mm`` of where it was: smoothing the bone
    elsewhere (its sutures, foramina) adds no implant."""
    solid = ndimage.gaussian_filter((implant | bone).astype(np.float32), sigma_mm / spacing) >= 0.5
    near = ndimage.distance_transform_edt(~implant, sampling=spacing) <= sigma_mm
    return solid & near & ~bone
