"""Finishing for manufacture on phantoms: the gap really separates implant and bone, the smoothing keeps
the volume within a stated bound, thin slivers go, and the patient's bone is never touched."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.implant.finish import FinishSettings, finish_implant

SMOOTHING_VOLUME_BOUND = 0.10  # |ΔV| / V at σ = 2 mm (the bound the docs state)


@pytest.fixture(scope="module")
def case():
    defective, truth = cranial_defect(make_phantom(1, (96, 96, 72), (2.0, 2.0, 2.5)), 1, style="skullbreak")
    return defective, truth.mask


def test_the_margin_leaves_a_real_gap_to_the_bone(case):
    defective, implant = case
    distance = ndimage.distance_transform_edt(~defective.mask, sampling=defective.spacing)
    assert distance[implant].min() < 3.0  # the implant touches the bone
    gap = finish_implant(implant, defective, FinishSettings(margin_mm=3.0))
    assert gap.any() and distance[gap].min() > 3.0
    assert not (gap & ~implant).any()  # the gap only removes
    # between the voxels' faces, not their centres: a 1 mm gap on 2-2.5 mm voxels still moves the implant off the
    # bone (before, every voxel next to the bone, 2 mm centre to centre, stayed and touched it)
    small = finish_implant(implant, defective, FinishSettings(margin_mm=1.0))
    touching = ndimage.binary_dilation(defective.mask) & small
    assert small.any() and not touching.any()
    assert distance[small].min() > 1.0 + max(defective.spacing)


def test_smoothing_keeps_the_volume_within_the_stated_bound(case):
    defective, implant = case
    smooth = finish_implant(implant, defective, FinishSettings(smoothing_mm=2.0))
    change = abs(int(smooth.sum()) - int(implant.sum())) / implant.sum()
    assert change <= SMOOTHING_VOLUME_BOUND, change
    assert not (smooth & defective.mask).any()
    assert not np.array_equal(smooth, implant)  # it did something


@pytest.mark.parametrize("sigma_mm", [2.0, 3.0])
def test_smoothing_keeps_the_implants_edge_on_the_rim(case, sigma_mm):
    """The implant is smoothed with the bone as one solid: its edge stays on the rim (before, smoothing it alone
    read the bone as empty: 39 % of the rim contact stayed at σ 2 mm, none at 3 mm), and no implant appears
    away from it."""
    defective, implant = case
    rim = ndimage.binary_dilation(defective.mask) & implant  # implant voxels that touch the bone
    smooth = finish_implant(implant, defective, FinishSettings(smoothing_mm=sigma_mm))
    assert (smooth & rim).sum() >= 0.9 * rim.sum()
    distance = ndimage.distance_transform_edt(~implant, sampling=defective.spacing)
    assert distance[smooth].max() <= sigma_mm and not (smooth & defective.mask).any()


def test_a_sliver_thinner_than_the_minimum_goes_and_the_plate_stays(case):
    defective, implant = case
    sliver = np.zeros_like(implant)
    i, j, k = np.argwhere(implant).mean(axis=0).astype(int)
    sliver[i, j - 12 : j + 12, k] = True  # one voxel thick, far thinner than 4 mm
    with_sliver = (implant | sliver) & ~defective.mask
    finished = finish_implant(with_sliver, defective, FinishSettings(min_thickness_mm=4.0))
    outside = sliver & ~implant & ~defective.mask
    assert (finished & outside).sum() <= 0.2 * outside.sum()  # at most its root, where the plate regrows
    assert finished.sum() >= 0.5 * implant.sum()


def test_off_changes_nothing_and_bad_values_are_refused(case):
    defective, implant = case
    assert np.array_equal(finish_implant(implant, defective, FinishSettings()), implant)
    for bad in (-1.0, float("nan"), float("inf"), 50.0):
        with pytest.raises(SkullVAEError, match="between 0 and"):
            FinishSettings(margin_mm=bad)


def test_the_completer_and_the_cli_flags_apply_the_finishing(case, tmp_path):
    from SkullVAELib.cli import main
    from SkullVAELib.io.image import write_mask
    from SkullVAELib.io.segfile import read_segmentation

    defective, _ = case
    write_mask(defective, tmp_path / "d.nrrd")
    argv = ["complete", "--input", str(tmp_path / "d.nrrd"), "--output", str(tmp_path / "o.seg.nrrd")]
    assert main([*argv, "--margin-mm", "3", "--smooth-mm", "1", "--no-mirror", "--progress", "none"]) == 0
    implant = read_segmentation(tmp_path / "o.seg.nrrd")[1]["Implant"]
    distance = ndimage.distance_transform_edt(~defective.mask, sampling=defective.spacing)
    assert implant.any() and distance[implant].min() > 3.0
