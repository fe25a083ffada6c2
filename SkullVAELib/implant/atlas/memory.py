"""Memory of the atlas implant's stages, estimated before each one allocates (``core.limits``).

Three stages hold arrays that grow with the patient's grid (N voxels), its registration grid
(L voxels, ≈ ``spacing_mm`` blocks, :func:`.store.registration_grid`) and the atlases' grids and
number (Lₐ: an atlas's registration image, Nₐ: its complete skull); each is checked in one line
naming it before it starts. Bytes per voxel measured as the peak resident memory of each stage
(phantoms of 64×64×48 and 160×160×120 voxels, 3 and 4 atlases):

- registering (:data:`REGISTERING`): the patient's registration image is made from a uint8 copy,
  a padded copy and a float32 copy of its mask (6 B/N) plus its shrunk and smoothed images
  (8 B/L). Then the registration holds that image and two uint8 metric masks (6 B/L) and every
  atlas's float32 registration image (``AtlasSet`` keeps them: 4 B/Lₐ each; :func:`held_bytes`,
  held by the later stages too). On top, one SimpleITK registration at a time: its copy of the
  atlas's image and that image's gradient (three float64 a voxel; 32 B/Lₐ measured) plus 4 B/L;
  or, before the B-spline, the chosen atlases resampled onto the registration grid (4 B/L each)
  and the distance maps and float sums that hide the missing part from it (27 B/L).
- fusing (:data:`FUSING`): on the patient's grid a uint8 reference, the float32 sum, two float32
  resampled atlases (the last and the next) and the float32 mean (13 B/N); the atlas's own mask
  as a uint8 image and a float32 copy (5 B/Nₐ); the B-spline sampled as a float64 displacement
  field on the registration grid (24 B/L).
- locating (:data:`LOCATING`): the float32 probability and four bool maps (8 B/N); Euclidean
  distance maps (float64 distances from int32 feature indices) and labels on the box of the
  missing bone (60 B per voxel of the box, measured).

The ray casts of the localisation (a fixed ≈ 100 MB, whatever the grid) are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from SkullVAELib.implant.atlas.store import AtlasSet, registration_grid
from SkullVAELib.implant.cleanup import bounding_box

REGISTERING = "registering the atlases to the patient"
FUSING = "fusing the atlases on the patient's grid"
LOCATING = "locating the missing bone on the patient's grid"

PREPARE_BYTES = 6.0  # per patient voxel: uint8, padded and float32 copies of its mask
PREPARE_LOW_BYTES = 8.0  # per registration voxel: the shrunk and the smoothed float32 image
LOW_BYTES = 4.0  # per registration voxel of a float32 registration image
FIXED_HELD_BYTES = 6.0  # per registration voxel: the patient's image and two uint8 metric masks
MOVING_WORK_BYTES = 32.0  # per atlas registration voxel: SimpleITK's copy and its gradient image
FIXED_WORK_BYTES = 4.0  # per registration voxel, during one registration
HIDE_WORK_BYTES = 27.0  # per registration voxel: distance maps and sums hiding the missing part
FUSE_BYTES = 13.0  # per patient voxel: reference, sum, two resampled atlases and the mean
FUSE_ATLAS_BYTES = 5.0  # per atlas voxel: its uint8 image and float32 copy
FIELD_BYTES = 24.0  # per registration voxel: a float64 displacement field
LOCATE_BYTES = 8.0  # per patient voxel: the probability and four bool maps
LOCATE_BOX_BYTES = 60.0  # per voxel of the missing bone's box: distance maps and labels
# the missing bone's box, grown by its margin, as a share of the patient's grid, where it is not known yet (a batch's
# estimate before the case runs): a SkullFix face's true implant takes 5-9 % (validation 056-062, 4 mm margin); the
# missing bone before clean-up reaches further
LOCATE_BOX_SHARE = 0.25


def held_bytes(low_voxels: int, atlases: AtlasSet) -> float:
    """Bytes the registration leaves held for the later stages: the patient's registration image
    of ``low_voxels`` and its metric masks, and every atlas's registration image (cached by the set)."""
    return FIXED_HELD_BYTES * low_voxels + LOW_BYTES * sum(atlases.voxels(i, "low") for i in atlases.ids)


def registration_bytes(
    size: Sequence[int], spacing: Sequence[float], atlases: AtlasSet, n_atlases: int, deformable: bool
) -> float:
    """Peak bytes of choosing and registering the atlases of ``atlases`` to a patient mask of
    ``size`` voxels of ``spacing`` mm, keeping ``n_atlases`` (B-spline too when ``deformable``)."""
    low = math.prod(registration_grid(size, spacing, atlases.spacing_mm)[1])
    largest = max((atlases.voxels(case_id, "low") for case_id in atlases.ids), default=0)
    prepare = PREPARE_BYTES * math.prod(int(n) for n in size) + PREPARE_LOW_BYTES * low
    register = MOVING_WORK_BYTES * largest + FIXED_WORK_BYTES * low
    hide = (LOW_BYTES * min(n_atlases, len(atlases)) + HIDE_WORK_BYTES) * low if deformable else 0.0
    return max(prepare, held_bytes(low, atlases) + max(register, hide))


def fusion_bytes(patient_voxels: int, atlas_voxels: Iterable[int], field_voxels: int = 0) -> float:
    """Peak bytes of fusing atlases of ``atlas_voxels`` voxels each on a patient grid of
    ``patient_voxels``, non-affine transforms sampled on a grid of ``field_voxels`` (0: none)."""
    return FUSE_BYTES * patient_voxels + FUSE_ATLAS_BYTES * max(atlas_voxels, default=0) + FIELD_BYTES * field_voxels


def locating_bytes(missing: np.ndarray, margin: int) -> float:
    """Peak bytes of locating the implant on the patient's grid of ``missing`` (bool (I, J, K), the
    missing bone before clean-up) whose box, grown by ``margin`` voxels, the distance maps cover."""
    box = bounding_box(missing, margin=margin)
    box_voxels = 0 if box is None else math.prod(s.stop - s.start for s in box)
    return LOCATE_BYTES * missing.size + LOCATE_BOX_BYTES * box_voxels


def atlas_case_bytes(
    size: Sequence[int], spacing: Sequence[float], atlases: AtlasSet, n_atlases: int, deformable: bool
) -> float:
    """Peak bytes of the atlas implant of a patient of ``size`` voxels of ``spacing`` mm before anything of the case
    is known (a batch's per-case estimate): the largest of registering, fusing (the set's largest skull, as
    ``fill.check_atlas_memory``) and locating the missing bone in a box of :data:`LOCATE_BOX_SHARE` of the grid."""
    voxels = math.prod(int(n) for n in size)
    low = math.prod(registration_grid(size, spacing, atlases.spacing_mm)[1])
    fusion = fusion_bytes(voxels, (atlases.voxels(i) for i in atlases.ids), low if deformable else 0)
    held = held_bytes(low, atlases)
    locating = LOCATE_BYTES * voxels + LOCATE_BOX_BYTES * LOCATE_BOX_SHARE * voxels
    return max(registration_bytes(size, spacing, atlases, n_atlases, deformable), held + fusion, held + locating)
