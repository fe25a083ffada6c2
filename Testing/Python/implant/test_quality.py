"""The implant-quality score (issue 24 §3): rim agreement of any source's implant, in [0, 1].

Phantoms at 96×96×72 voxels of 2.2 mm with a SkullBreak-style vault defect; the true implant is
the good one, and each bad variant must score below it.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from SkullVAELib.data.defects import cranial_defect, facial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.implant import raycast
from SkullVAELib.implant.quality import implant_quality
from SkullVAELib.implant.rimfit import rim_fit

SHAPE, SPACING = (96, 96, 72), (2.2, 2.2, 2.2)


@pytest.fixture(scope="module", params=[(1, "skullbreak"), (2, "skullfix")])
def case(request):
    seed, style = request.param
    defective, implant = cranial_defect(make_phantom(seed, SHAPE, SPACING), seed, style=style)
    return defective, implant.mask


def _stray(defective, implant: np.ndarray) -> np.ndarray:
    """The implant plus a block touching the lowest bone voxel (far below a vault defect)."""
    bone = np.argwhere(defective.mask)
    low = bone[np.argmin(bone[:, 2])]
    blob = np.zeros_like(implant)
    blob[tuple(slice(max(c - 3, 0), c + 3) for c in low)] = True
    return implant | (blob & ~defective.mask)


def test_bad_implants_rank_below_the_good_one(case):
    defective, truth = case
    good = implant_quality(defective, truth)
    bad = {
        "shifted": np.roll(truth, 3, axis=0) & ~defective.mask,
        "raised": np.roll(truth, 2, axis=2) & ~defective.mask,
        "too thin": ndimage.binary_erosion(truth),
        "stray piece": _stray(defective, truth),
        "empty": np.zeros_like(truth),
    }
    assert 0.0 <= good.score <= 1.0 and good.score >= 0.5, good
    for name, implant in bad.items():
        q = implant_quality(defective, implant)
        assert 0.0 <= q.score <= 1.0
        assert q.score < good.score - 0.2, (name, q, good)
    assert implant_quality(defective, bad["empty"]).score == 0.0
    assert "empty" in implant_quality(defective, bad["empty"]).explanation
    assert "pieces" in implant_quality(defective, bad["stray piece"]).explanation


def test_the_rim_fit_scores_like_the_true_implant(case):
    """Any source's implant is scored the same way: the rim fit's (no ground truth involved)."""
    defective, truth = case
    q = implant_quality(defective, rim_fit(defective).implant)
    assert q.score >= 0.5, q
    assert set(q.components) == {"surface", "thickness", "coverage", "pieces"}
    assert "\n" not in q.explanation and q.explanation.startswith("implant quality")


def test_a_second_defects_implant_is_not_a_stray_piece():
    """Two defects 30 mm or more apart: the piece over the second hole is its implant, not a stray piece
    (the pieces component stays 1); a block far below both is still stray."""
    from test_postprocess import two_defects

    twice, first, second = two_defects(seed=0)  # the second 0.8 of the first: the post-processing keeps it too
    q = implant_quality(twice, first | second)
    assert q.components["pieces"] == 1.0, q
    assert q.score >= 0.3, q  # not a doubtful implant
    stray = implant_quality(twice, _stray(twice, first | second))
    assert stray.components["pieces"] < 1.0 and "pieces" in stray.explanation
    # a block in the skull's hollow, halfway from the ray centre to the first implant: on the main piece's own
    # hole's rays, 31 mm from it and a third of its size, so stray (were it exempted, pieces would be 1)
    centre = raycast.cranial_centre(twice)
    affine = twice.index_to_physical()
    towards = (np.argwhere(first) @ affine[:3, :3].T + affine[:3, 3]).mean(axis=0) - centre
    middle = np.linalg.solve(affine[:3, :3], centre + 0.45 * towards - affine[:3, 3]).round().astype(int)
    block = np.zeros_like(first)
    block[tuple(slice(i - 5, i + 5) for i in middle)] = True
    under = implant_quality(twice, first | second | (block & ~twice.mask))
    assert under.components["pieces"] < 0.5, under


def test_an_implant_on_the_patients_bone_only_scores_zero(case):
    defective, _ = case
    q = implant_quality(defective, defective.mask)  # bone voxels are not implant
    assert q.score == 0.0


def test_a_facial_implant_without_a_vault_hole_gets_a_score():
    """A facial defect is no enclosed vault hole: coverage is left out, the rim still scores."""
    phantom = make_phantom(1, SHAPE, SPACING)
    defective, implant = facial_defect(phantom, 3)
    q = implant_quality(defective, implant.mask)
    assert 0.0 <= q.score <= 1.0
    assert "coverage" not in q.components or np.isfinite(q.components["coverage"])
    assert q.explanation


def test_the_scans_edge_does_not_count_against_an_implant():
    """On a tilted scan whose top edge cuts the defect, the true implant still scores well (the rays the
    edge cuts are left out) and a shifted one below it."""
    from test_scan_edge import _tilted

    phantom = make_phantom(2, SHAPE, SPACING)
    defective, implant = cranial_defect(phantom, 2, style="skullfix")
    tilted, truth = _tilted([defective, implant], implant.mask, -30.0, 0.5)
    good = implant_quality(tilted, truth.mask)
    assert good.score >= 0.5, good
    assert good.components["coverage"] == pytest.approx(1.0)
    shifted = implant_quality(tilted, np.roll(truth.mask, 3, axis=0) & ~tilted.mask)
    assert shifted.score < good.score - 0.2


def test_bone_under_the_implant_and_its_memory_order_change_nothing(case):
    """The score reads only the implant's box, without the patient's bone: an implant given with
    bone voxels, or in the other memory order, scores exactly the same."""
    defective, truth = case
    plain = implant_quality(defective, truth)
    with_bone = implant_quality(defective, np.asfortranarray(truth | defective.mask))
    assert with_bone.score == plain.score
    assert with_bone.measures == plain.measures


def test_the_bone_free_box_is_the_implants_tight_box():
    from SkullVAELib.implant.quality import _bone_free_box
    from SkullVAELib.io.image import SkullImage

    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[2:5] = True  # bone
    skull = SkullImage(mask, np.zeros(3), np.ones(3))
    implant = np.zeros_like(mask)
    implant[3:9, 4:6, 7:8] = True  # its first rows lie on the bone
    box, crop = _bone_free_box(skull, implant)
    assert box == (slice(5, 9), slice(4, 6), slice(7, 8))
    assert crop.all() and crop.shape == (4, 2, 1)
    _, empty = _bone_free_box(skull, mask)
    assert not empty.any()


def test_how_far_the_implant_reaches_from_its_rim(case):
    """``reach_mm``: the footprint's middle from its border along the outer surface; half the implant
    (cut through its middle) reaches less far, and the explanation names it."""
    defective, truth = case
    full = implant_quality(defective, truth)
    index = np.argwhere(truth)
    axis = int(np.argmax(np.ptp(index, axis=0)))  # across the implant's longest side
    half = truth.copy()
    half[(slice(None),) * axis + (slice(int(np.median(index[:, axis])), None),)] = False
    cut = implant_quality(defective, half)
    extent_mm = float(np.ptp(index, axis=0).max()) * SPACING[0]
    assert 0.0 < full.measures["reach_mm"] < extent_mm / 2 + 2 * SPACING[0]
    assert cut.measures["reach_mm"] < full.measures["reach_mm"]
    assert f"its middle lies {full.measures['reach_mm']:.0f} mm from the rim" in full.explanation
