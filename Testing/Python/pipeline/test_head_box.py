"""pipeline.head_box: a scan that holds more than a head is completed on its head, and the results lie on the scan."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.io.image import SkullImage
from SkullVAELib.pipeline.completer import Completer
from SkullVAELib.pipeline.head_box import HEAD_SPAN_MM, find_head
from SkullVAELib.pipeline.settings import CompletionSettings

SPACING = 3.2


@pytest.fixture(scope="module")
def phantom_defect():
    """(defective phantom skull, its true implant): 64 × 64 × 48 voxels of 3.2 mm."""
    return cranial_defect(make_phantom(1, (64, 64, 48), (SPACING,) * 3), 1, style="skullbreak")


def _on_a_body(skull: SkullImage, below_mm: float) -> tuple[SkullImage, int]:
    """``skull`` on a grid grown ``below_mm`` towards the feet (LPS -z), holding a spine and ribs there that weigh
    more than the skull; (the grown image, the slices added below)."""
    pad = int(round(below_mm / SPACING))
    mask = np.zeros((*skull.shape[:2], skull.shape[2] + pad), dtype=bool)
    mask[:, :, pad:] = skull.mask
    i, j = np.meshgrid(*(np.arange(n) - n / 2 for n in skull.shape[:2]), indexing="ij")
    x, y = i * SPACING, j * SPACING
    spine = x**2 + (y - 10) ** 2 < 14**2
    ribs = (np.abs(np.hypot(x / 1.2, y) - 70) < 5) | ((np.abs(x) < 4) & (y > 10) & (y < 70))
    mask[:, :, : pad - 5] |= spine[:, :, None]
    for k in range(0, pad - 30, 8):
        mask[:, :, k : k + 3] |= ribs[:, :, None]
    origin = skull.origin - skull.direction @ np.array([0.0, 0.0, pad * SPACING])
    return SkullImage(mask, origin, skull.spacing, skull.direction, {}), pad


def test_a_body_scan_is_completed_on_its_head_and_its_results_lie_on_the_scan(phantom_defect):
    """Below the phantom, a spine and ribs that outweigh it pulled the rays' centre and the mirror into the trunk;
    now the implant is the head's alone (as on the head by itself), pasted onto the body scan's grid, and the
    rest of the bone is the patient's as scanned."""
    defective, truth = phantom_defect
    body, pad = _on_a_body(defective, 400.0)
    assert body.mask[:, :, :pad].sum() > defective.mask.sum()
    completer = Completer(CompletionSettings())
    alone = completer.complete(defective)
    result = completer.complete(body)
    assert result.implant.shape == body.shape and np.array_equal(result.implant.origin, body.origin)
    assert not result.implant.mask[:, :, :pad].any()
    assert dice(result.implant.mask[:, :, pad:], alone.implant.mask) >= 0.95
    assert dice(result.implant.mask[:, :, pad:], truth.mask) >= 0.85
    assert np.array_equal(result.completed.mask, body.mask | result.implant.mask)
    assert result.warnings[0].startswith("the scan's bone spans") and "top 260 mm" in result.warnings[0]
    assert find_head(defective) is None and "spans" not in " ".join(alone.warnings)  # a head alone: as before


def test_the_head_box_on_an_oblique_grid_keeps_the_bone_above_its_cut_and_pastes_back_exactly(phantom_defect):
    defective, _ = phantom_defect
    body, _ = _on_a_body(defective, 400.0)
    turn = sitk.Euler3DTransform()
    turn.SetRotation(0.3, -0.2, 0.4)
    oblique = SkullImage(body.mask, body.origin, body.spacing, np.array(turn.GetMatrix()).reshape(3, 3), {})
    head = find_head(oblique)
    assert head is not None and head.span_mm > HEAD_SPAN_MM
    crop = head.crop(oblique)
    affine = crop.index_to_physical()
    s_mm = np.argwhere(crop.mask) @ affine[2, :3] + affine[2, 3]
    assert s_mm.min() >= head.cut_mm and crop.mask.sum() < oblique.mask.sum()
    full = oblique.index_to_physical()
    top = (np.argwhere(oblique.mask) @ full[2, :3] + full[2, 3]).max()
    assert head.cut_mm == pytest.approx(top - HEAD_SPAN_MM, abs=2 * SPACING)
    assert np.array_equal(head.paste(oblique, crop.mask, oblique.mask), oblique.mask)  # the round trip
    everything = head.paste(oblique, np.ones(crop.shape, dtype=bool), None)  # written above the cut, in the box
    points = np.argwhere(everything) @ full[:3, :3].T + full[:3, 3]
    assert points[:, 2].min() >= head.cut_mm and 0 < everything.sum() < np.prod(crop.shape)
    assert not everything[: head.box[0].start].any() and not everything[head.box[0].stop :].any()
    assert np.allclose(crop.index_to_physical()[:3, 3], full[:3, :3] @ [s.start for s in head.box] + full[:3, 3])
