"""The rim fit's settings for a scan's voxels (``RimFitConfig.for_voxels``): SkullFix's voxels change
nothing; on coarse slices the splines smooth more, and that holds a phantom's implant together."""

from __future__ import annotations

import pytest

from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.implants import DefectCase, score
from SkullVAELib.evaluation.resolution import coarser_case
from SkullVAELib.implant.rimfit import RimFitConfig, rim_fit


@pytest.mark.parametrize("spacing", [(0.41, 0.41, 0.625), (0.5, 0.5, 0.75), (0.8, 0.8, 0.8)])
def test_skullfix_voxels_keep_the_settings(spacing):
    cfg = RimFitConfig()
    assert cfg.for_voxels(spacing) is cfg


def test_coarse_slices_smooth_both_splines_by_the_square_of_the_largest_side():
    cfg = RimFitConfig(smoothing=0.01, thickness_smoothing=0.02, smoothing_voxel_mm=0.8)
    coarse = cfg.for_voxels((1.0, 1.0, 3.2))
    assert coarse.smoothing == pytest.approx(0.01 * 16)
    assert coarse.thickness_smoothing == pytest.approx(0.02 * 16)
    assert (coarse.degree, coarse.ring, coarse.trim_mm) == (cfg.degree, cfg.ring, cfg.trim_mm)
    assert cfg.smoothing == 0.01  # a new config; the caller's is untouched


def test_the_rule_is_off_at_zero():
    cfg = RimFitConfig(smoothing_voxel_mm=0.0)
    assert cfg.for_voxels((2.0, 2.0, 5.0)) is cfg


def test_a_phantom_scanned_with_thick_slices_keeps_its_implant():
    """A vault defect of a phantom seen through 4.4 mm slices: the spline through the rim's noisy
    radii bends away without the rule (DSC 0.78), the smoothed one follows the vault (0.94)."""
    phantom = make_phantom(1, (96, 96, 72), (2.2, 2.2, 2.2))
    defective, implant = cranial_defect(phantom, 1, style="skullbreak")
    case = coarser_case(DefectCase("p1", "vault", 1, defective, implant.mask, phantom.mask), (2.2, 2.2, 4.4))
    smoothed = score(rim_fit(case.defective).implant, case)["dsc"]
    flat = score(rim_fit(case.defective, RimFitConfig(smoothing_voxel_mm=0.0)).implant, case)["dsc"]
    assert smoothed > 0.9
    assert smoothed > flat + 0.05


def test_a_scan_of_thick_slices_gets_a_note_and_a_thin_one_none():
    from SkullVAELib.implant.rimfit import thick_slice_note

    phantom = make_phantom(1, (48, 48, 36), (2.2, 2.2, 2.2))
    assert thick_slice_note(phantom) == []
    coarse = coarser_case(DefectCase("p1", "vault", 1, phantom, phantom.mask & False, phantom.mask), (2.2, 2.2, 5.0))
    (note,) = thick_slice_note(coarse.defective)
    assert "5.0 mm" in note and "\n" not in note
    assert any(m == note for m in rim_fit(coarse.defective).messages)
