"""Scored cranial cases on skulls that have a defect and no truth: a new defect away from the filled hole."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation import extra_cases
from SkullVAELib.io.image import read_skull, write_mask


@pytest.fixture(scope="module")
def defective_root(tmp_path_factory):
    """A folder of defective skulls only (``skullfix_test``'s layout): one phantom with a SkullFix box cut."""
    root = tmp_path_factory.mktemp("defective_only")
    (root / "defective_skull").mkdir()
    complete = make_phantom(3, (96, 96, 72), (2.2, 2.2, 2.2))
    defective, _ = cranial_defect(complete, 5, style="skullfix")
    write_mask(defective, root / "defective_skull" / "901.nrrd")
    return root


def test_a_folder_without_complete_skulls_has_no_ground_truth(defective_root, tmp_path):
    assert not extra_cases.has_ground_truth(defective_root)
    (tmp_path / "complete_skull").mkdir()
    assert extra_cases.has_ground_truth(tmp_path)


def test_new_defects_are_cut_away_from_the_filled_hole(defective_root):
    original = read_skull(defective_root / "defective_skull" / "901.nrrd", kind="binary")
    cases = list(extra_cases.extra_defect_cases(defective_root, ["901"], ["vault", "irregular"], seeds=[0, 1]))
    assert [(c.defect, c.seed) for c in cases] == [("vault", 0), ("vault", 1), ("irregular", 0), ("irregular", 1)]
    filled = cases[0].complete & ~original.mask
    assert filled.any()  # the existing hole was filled by the rim fit
    distance = extra_cases.distance_from(filled, original.spacing, 40.0)
    for case in cases:
        assert case.implant.any()
        assert np.array_equal(case.defective.mask | case.implant, case.complete)
        assert not (case.defective.mask & case.implant).any()
        # the truth is the patient's own bone, at least EXCLUDE_MM from the filled hole
        assert not (case.implant & ~original.mask).any()
        assert distance[case.implant].min() >= extra_cases.EXCLUDE_MM
        assert case.defective.same_geometry(original)


def test_a_wider_exclusion_is_the_one_the_draws_keep(defective_root):
    """``exclude_mm`` sets both the distance's reach and the rule the draws must meet."""
    original = read_skull(defective_root / "defective_skull" / "901.nrrd", kind="binary")
    cases = list(
        extra_cases.extra_defect_cases(defective_root, ["901"], ["vault", "irregular"], [0, 1], exclude_mm=30.0)
    )
    assert cases
    distance = extra_cases.distance_from(cases[0].complete & ~original.mask, original.spacing, 60.0)
    assert all(distance[case.implant].min() >= 30.0 for case in cases)


def test_a_draw_that_cannot_leave_the_filled_hole_is_left_out(defective_root):
    original = read_skull(defective_root / "defective_skull" / "901.nrrd", kind="binary")
    everywhere = np.zeros(original.shape, dtype=np.float32)  # every voxel "on" the filled hole
    assert extra_cases.draw_away_from(original, everywhere, 3, "skullbreak") is None


def test_distance_is_in_millimetres_and_bounded_to_the_reach():
    mask = np.zeros((30, 10, 10), dtype=bool)
    mask[0] = True
    distance = extra_cases.distance_from(mask, (2.0, 1.0, 1.0), 10.0)
    assert distance[0].max() == 0.0
    assert distance[3, 5, 5] == pytest.approx(6.0)
    assert np.isinf(distance[20, 5, 5])  # beyond the reach: at least the reach, not computed


def test_a_defect_type_that_needs_a_complete_skull_is_refused(defective_root):
    with pytest.raises(SkullVAEError, match="need a complete skull"):
        next(extra_cases.extra_defect_cases(defective_root, ["901"], ["cranial"]))
    with pytest.raises(SkullVAEError, match="no defective_skull/902"):
        next(extra_cases.extra_defect_cases(defective_root, ["902"], ["vault"]))


def test_scored_cases_take_the_folder_as_it_is(defective_root, tmp_path):
    (case,) = extra_cases.scored_cases(defective_root, ["901"], ["vault"], [1])
    (same,) = extra_cases.extra_defect_cases(defective_root, ["901"], ["vault"], seeds=[1])
    assert np.array_equal(case.implant, same.implant)
    (tmp_path / "complete_skull").mkdir()
    write_mask(make_phantom(3, (96, 96, 72), (2.2, 2.2, 2.2)), tmp_path / "complete_skull" / "900.nrrd")
    (whole,) = extra_cases.scored_cases(tmp_path, ["900"], ["vault"], [1])
    assert np.array_equal(
        whole.defective.mask | whole.implant, whole.complete
    )  # SkullFix's layout: cut from the complete skull
