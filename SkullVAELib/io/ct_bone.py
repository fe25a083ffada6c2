"""A CT's bone: its threshold, its largest piece, and a diploë that reads under the threshold.

A skull's vault is two tables of compact bone with the diploë, spongy bone, between them. Where the diploë lies
under the threshold (an elderly patient's fatty marrow, a child's thin skull, a soft kernel's blur), the bone reads
as two thin shells: every ray of the rim fit ends at the outer table, the implant comes out as thin as that table,
and its rim agrees with it, so its quality score does not see it (validation 057 scanned with a 200 HU diploë:
DSC 0.36 at quality 0.98; docs/results/issue-24-2026-12-07.md, "A CT as a scanner gives it").
:func:`bone_of_ct` looks for such a hollow bone where the bone's surface holds an unusual share of its voxels and
confirms it at half the threshold: where that removes a large part of its surface voxels (the voids between the
tables fill; a solid bone only grows), the bone is read there, with a warning that says so. A thin but solid skull's surface share hardly moves
with the threshold, and SkullFix's masks never take this path (they are no CT).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

# a bone with more of its voxels on its surface (a zero 6-neighbour) is looked at again at half the threshold
# (SkullFix's 220 masks 0.13-0.26; validation's as blurred, noisy CTs 0.09-0.15 at 300 HU, with a 200 HU diploë 0.34)
HOLLOW_SURFACE_SHARE = 0.25
# ... and is read there where this part of its surface voxels is gone: the voids between the tables fill and their
# two faces go (validation's CTs with a 200 HU diploë 0.45, a 1 mm phantom's 0.29); a solid bone grows outwards at
# the lower threshold, and its surface with it (validation's CTs with a 700 HU diploë: about 0.02)
HOLLOW_SURFACE_DROP = 0.2
# half a threshold under this is soft tissue's (muscle, blood ≈ 40-80 HU): not tried
LOWEST_BONE_HU = 100.0


def bone_of_ct(img: sitk.Image, threshold: float, path: str | Path) -> tuple[np.ndarray, float, list[str]]:
    """(bone bool (K, J, I), the threshold it was read at, warnings) of the CT ``img`` (values in HU): voxels ≥
    ``threshold``, the largest 26-connected piece; at ``threshold`` / 2 instead where the bone reads hollow
    (module docstring). ``path`` names the scan in the warning."""
    bone = _largest_piece(img, threshold)
    surface, total = surface_voxels(bone)
    lower = threshold / 2.0
    if surface > HOLLOW_SURFACE_SHARE * total and lower >= LOWEST_BONE_HU:
        filled = _largest_piece(img, lower)
        filled_surface, filled_total = surface_voxels(filled)
        if filled_surface <= (1.0 - HOLLOW_SURFACE_DROP) * surface:
            note = (
                f"{Path(path).name}: its bone reads hollow at {threshold:g} HU ({100 * surface / total:.0f} % of it "
                f"on a surface, {100 * filled_surface / filled_total:.0f} % at {lower:g} HU: the diploë between the "
                f"tables lies under the threshold), so it was read at {lower:g} HU; check the bone, or give another "
                "--hu-threshold"
            )
            return sitk.GetArrayFromImage(filled).astype(bool), lower, [note]
    return sitk.GetArrayFromImage(bone).astype(bool), threshold, []


def _largest_piece(img: sitk.Image, threshold: float) -> sitk.Image:
    """uint8 image: the largest 26-connected piece of ``img``'s voxels ≥ ``threshold``."""
    # numpy's comparison, not ITK's: ITK casts the threshold to the pixel type (300 on a uint8 scan read as 44)
    above = sitk.GetImageFromArray((sitk.GetArrayViewFromImage(img) >= float(threshold)).view(np.uint8))
    above.CopyInformation(img)
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(above, True), sortByObjectSize=True)
    return sitk.Equal(labels, 1)


def surface_voxels(mask: sitk.Image) -> tuple[int, int]:
    """(voxels with a zero 6-neighbour, voxels) of a uint8 ``mask``'s nonzero voxels; ITK's ``BinaryContour`` finds
    the first (0.13-0.25 s on a SkullFix scan)."""
    contour = sitk.BinaryContour(mask, fullyConnected=False)  # held: a view of a freed image would crash
    total = np.count_nonzero(sitk.GetArrayViewFromImage(mask))
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(contour))), int(total)
