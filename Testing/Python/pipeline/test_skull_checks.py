"""pipeline.skull_checks: an inverted mask and a filled cranium are refused in one line, not taken for a complete
skull ("no cranial defect found ... a complete skull has nothing to fill")."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAELib.cli import main
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.implant.raycast import cranial_centre
from SkullVAELib.io.image import write_mask
from SkullVAELib.pipeline.completer import Completer
from SkullVAELib.pipeline.settings import CompletionSettings, RimFitSettings
from SkullVAELib.pipeline.skull_checks import border_bone_share, centre_bone_share, check_is_a_skull


@pytest.fixture(scope="module")
def case():
    """(a phantom with a cranial defect, bool (I, J, K) of the voxels within ``radius`` mm of its cranial centre)."""
    defective, _ = cranial_defect(make_phantom(1, (64, 64, 48), (3.2, 3.2, 3.2)), 1, style="skullbreak")
    points = np.indices(defective.shape).reshape(3, -1).T * defective.spacing + defective.origin
    distance = np.linalg.norm(points - cranial_centre(defective), axis=1).reshape(defective.shape)
    return defective, distance


def test_a_skull_and_a_calcified_pineal_pass(case):
    defective, distance = case
    assert border_bone_share(defective.mask) < 0.05 and centre_bone_share(defective) == 0.0
    check_is_a_skull(defective)
    check_is_a_skull(defective.with_mask(defective.mask | (distance <= 3.0)))  # a 6 mm calcification at the centre


def test_an_inverted_mask_and_a_filled_cranium_are_refused_by_name(case, tmp_path, capsys):
    defective, distance = case
    inverted = defective.with_mask(~defective.mask)
    with pytest.raises(SkullVAEError, match="of the scan's border is bone: an inverted mask"):
        Completer(CompletionSettings(rimfit=RimFitSettings(mirror=False))).complete(inverted)
    filled = defective.with_mask(defective.mask | (distance <= 50.0))
    with pytest.raises(SkullVAEError, match=r"the cranium is filled \(100 % bone within 10 mm of its centre\)"):
        check_is_a_skull(filled)
    path = tmp_path / "head.nrrd"
    write_mask(filled, path)
    out = tmp_path / "out.seg.nrrd"
    assert main(["complete", "--input", str(path), "--output", str(out), "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "head.nrrd" in err[0] and "a head mask" in err[0] and not out.exists()


def test_the_border_share_counts_every_face():
    mask = np.zeros((4, 5, 6), dtype=bool)
    mask[0] = True  # one face of 5 × 6 voxels
    faces = 2 * (5 * 6 + 4 * 6 + 4 * 5)
    assert border_bone_share(mask) == pytest.approx((5 * 6 + 2 * 6 + 2 * 5) / faces)
    assert border_bone_share(np.ones((3, 3, 3), dtype=bool)) == 1.0
