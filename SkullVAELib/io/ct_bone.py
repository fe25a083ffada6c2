"""A CT's bone: its threshold, its largest piece, and a diploë that reads under the threshold.

A skull's vault is two tables of compact bone with the diploë, spongy bone, between them. Where the diploë lies
under the threshold (an elderly patient's fatty marrow, a child's thin skull, a soft kernel's blur), the bone reads
as two thin shells: every ray of the rim fit ends at the outer table, the implant comes out as thin as that table,
and its rim agrees with it, so its quality score does not see it (validation 057 scanned with a 200 HU diploë:
DSC 0.36 at quality 0.98; docs/results/issue-24-2026-12-07.md, "A CT as a scanner gives it").
:func:`bone_of_ct` looks for such a hollow bone where the bone's surface holds an unusual share of its voxels and
confirms it on the scan smoothed (its noise averaged away) at :data:`DIPLOE_HU`: where that removes a large part of
its surface voxels (the voids between the tables fill; a solid bone only grows), the space between the tables is
filled from there (the faces stay the threshold's), with a warning that says so. A thin but solid skull's surface hardly moves with the threshold. Only a scan in HU (one that
holds air, under :data:`AIR_BELOW_HU`) is looked at: a CBCT's own units give 150 no meaning. SkullFix's masks never
take this path (they are no CT).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

# a bone with more of its voxels on its surface (a zero 6-neighbour) is looked at again (SkullFix's 220 masks
# 0.13-0.26; validation's skulls as blurred, noisy CTs 0.09-0.15 at 300 HU, with a 200 HU diploë 0.34)
HOLLOW_SURFACE_SHARE = 0.25
# ... and is read at DIPLOE_HU where this part of its surface voxels is gone: the voids between the tables fill and
# their two faces go; a solid bone grows outwards at a lower threshold, and its surface with it (measured in
# docs/results/issue-24-2026-12-07.md, "A CT as a scanner gives it")
HOLLOW_SURFACE_DROP = 0.2
# the threshold a hollow bone is read at: above soft tissue (muscle, blood ≈ 40-80 HU) with room for partial
# volume, under a fatty diploë's 200-300 HU; a threshold at or under it is not lowered
DIPLOE_HU = 150.0
# the scan is in HU only where it holds air (≈ -1000 HU) under this
AIR_BELOW_HU = -500.0
# the scan is smoothed before DIPLOE_HU is read on it: σ (mm), about a SkullFix voxel (noise of 40-60 HU in soft
# tissue reaches 150 HU often enough to grow specks on every bone face)
SMOOTH_MM = 0.5


def bone_of_ct(img: sitk.Image, threshold: float, path: str | Path) -> tuple[np.ndarray, float, list[str]]:
    """(bone bool (K, J, I), the threshold it was read at, warnings) of the CT ``img`` (values in HU): voxels ≥
    ``threshold``, the largest 26-connected piece; its tables' space filled at :data:`DIPLOE_HU` on the smoothed scan
    where the bone reads hollow (module docstring). ``path`` names the scan in the warning."""
    bone = _largest_piece(img, threshold)
    surface, total = surface_voxels(bone)
    if surface > HOLLOW_SURFACE_SHARE * total and threshold > DIPLOE_HU and _in_hounsfield(img):
        smoothed = sitk.SmoothingRecursiveGaussian(sitk.Cast(img, sitk.sitkFloat32), SMOOTH_MM)
        low = _largest_piece(smoothed, DIPLOE_HU)
        low_surface, low_total = surface_voxels(low)
        if low_surface <= (1.0 - HOLLOW_SURFACE_DROP) * surface:
            note = (
                f"{Path(path).name}: its bone reads hollow at {threshold:g} HU ({100 * surface / total:.0f} % of it "
                f"on a surface, {100 * low_surface / low_total:.0f} % at {DIPLOE_HU:g} HU: the diploë between the "
                f"tables lies under the threshold), so the space between them was read at {DIPLOE_HU:g} HU; check "
                "the bone, or give another bone threshold (--hu-threshold)"
            )
            return sitk.GetArrayFromImage(_filled_between(bone, low)).astype(bool), DIPLOE_HU, [note]
    return sitk.GetArrayFromImage(bone).astype(bool), threshold, []


def _filled_between(bone: sitk.Image, low: sitk.Image) -> sitk.Image:
    """uint8: ``bone`` (at the threshold) with the space between its tables that ``low`` (the smoothed scan at
    :data:`DIPLOE_HU`) holds, less ``low``'s outermost voxel, whose faces the smoothing and the lower threshold put
    ≈ 1 mm further out than the threshold's (the largest piece of the two)."""
    core = sitk.BinaryErode(low, [1, 1, 1], sitk.sitkBall, 0, 1)
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.Or(bone, core), True), sortByObjectSize=True)
    return sitk.Equal(labels, 1)


def _in_hounsfield(img: sitk.Image) -> bool:
    """Whether ``img`` holds air as HU writes it (any value under :data:`AIR_BELOW_HU`)."""
    return float(np.min(sitk.GetArrayViewFromImage(img))) < AIR_BELOW_HU


def _largest_piece(img: sitk.Image, threshold: float) -> sitk.Image:
    """uint8 image: the largest 26-connected piece of ``img``'s voxels ≥ ``threshold``."""
    # numpy's comparison, not ITK's: ITK casts the threshold to the pixel type (300 on a uint8 scan read as 44)
    above = sitk.GetImageFromArray((sitk.GetArrayViewFromImage(img) >= float(threshold)).view(np.uint8))
    above.CopyInformation(img)
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(above, True), sortByObjectSize=True)
    return sitk.Equal(labels, 1)


def surface_voxels(mask: sitk.Image) -> tuple[int, int]:
    """(voxels with a zero 6-neighbour, voxels) of a uint8 ``mask``'s nonzero voxels; ITK's ``BinaryContour`` finds
    the first (0.13-0.25 s on a SkullFix scan), reading outside the grid as bone (bone on the scan's border is no
    surface there)."""
    contour = sitk.BinaryContour(mask, fullyConnected=False)  # held: a view of a freed image would crash
    total = np.count_nonzero(sitk.GetArrayViewFromImage(mask))
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(contour))), int(total)
