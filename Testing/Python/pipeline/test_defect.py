"""``--defect auto`` (pipeline/defect.py): an enclosed hole outside the vault's directions as scanned is a cranial
defect when the rim fit closes it as one (a pitched head's frontal defect), and is not when it does not; then the
error says where the hole points."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from SkullVAELib.bundle.folder import ModelFolder
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.implant.gridturn import GridTurn
from SkullVAELib.implant.quality import ImplantQuality
from SkullVAELib.implant.raycast import bone_points, cranial_centre
from SkullVAELib.implant.vault import on_vault
from SkullVAELib.pipeline import defect
from SkullVAELib.pipeline.completer import Completer
from SkullVAELib.pipeline.context import CompletionContext
from SkullVAELib.pipeline.settings import CompletionSettings, RimFitSettings

NO_MIRROR = RimFitSettings(mirror=False)


def _frontal_defect(elevation_deg: float = 35.0, radius_mm: float = 24.0):
    """(defective phantom, true implant bool (I, J, K)): a ball cut from the forehead, centred on the outer surface
    straight ahead at ``elevation_deg`` above the horizontal from the cranial centre."""
    phantom = make_phantom(1, (96, 96, 72), (2.2, 2.2, 2.2))
    centre, affine = cranial_centre(phantom), phantom.index_to_physical()
    points = np.argwhere(phantom.mask) @ affine[:3, :3].T + affine[:3, 3]
    ahead = np.array([0.0, -np.cos(np.radians(elevation_deg)), np.sin(np.radians(elevation_deg))])
    along = (points - centre) @ ahead
    tip = centre + ahead * along[np.linalg.norm(points - centre - np.outer(along, ahead), axis=1) < 3.0].max()
    grid = np.indices(phantom.shape).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3]
    ball = (np.linalg.norm(grid - tip, axis=1) < radius_mm).reshape(phantom.shape)
    return phantom.with_mask(phantom.mask & ~ball), phantom.mask & ball


@pytest.fixture(scope="module")
def pitched_frontal():
    """The frontal defect on a head pitched 15° forehead-down (its header turned about the bone's centroid)."""
    defective, truth = _frontal_defect()
    pitch = Rotation.from_euler("x", 15.0, degrees=True).as_matrix()
    return GridTurn(pitch, bone_points(defective, every=5).mean(axis=0)).skull(defective), truth


def test_a_pitched_heads_frontal_defect_outside_the_vault_as_scanned_is_cranial(pitched_frontal):
    # before, the hole pointing into the face's sector (16° up) made "auto" take the skull for facial, and without a
    # facial source the run stopped with "no cranial defect found"
    skull, truth = pitched_frontal
    context = CompletionContext(skull, CompletionSettings(rimfit=NO_MIRROR), ModelFolder(None))
    holes = context.rim_fit().holes_in_lps()
    assert holes and not defect.vault_holes(holes)  # the case is what it should test: no hole on the vault
    result = Completer(CompletionSettings(rimfit=NO_MIRROR)).complete(skull)
    assert result.defect == "cranial" and result.source == "rimfit"
    assert "into the face's sector" in result.defect_reason and "a head pitched in the scan" in result.defect_reason
    assert result.quality >= defect.OFF_VAULT_CRANIAL_QUALITY
    assert dice(result.implant.mask, truth) >= 0.9


def test_an_off_vault_hole_the_rim_fit_closes_poorly_stays_facial(pitched_frontal, monkeypatch):
    # a facial cut that a chin-up head leaves enclosed: the rim fit's fill scored 0.06-0.26 on SkullFix's skulls
    skull, _ = pitched_frontal
    poor = ImplantQuality(0.2, {"surface": 0.2}, {}, "implant quality 0.20")
    monkeypatch.setattr(CompletionContext, "implant_quality", lambda self, implant, defect=None: poor)
    context = CompletionContext(skull, CompletionSettings(rimfit=NO_MIRROR), ModelFolder(None))
    decision = defect.decide_defect(context)
    assert decision.defect == "facial" and decision.hole_off_vault
    assert "pitched forehead-down lies there too" in decision.reason


def test_no_fill_means_no_off_vault_decision(monkeypatch):
    """An off-vault hole the rim fit leaves unfilled (its implant empty) gives no reason and asks no score."""
    direction = np.array([0.0, -0.97, 0.2])
    hole = SimpleNamespace(direction=direction / np.linalg.norm(direction), solid_angle_sr=0.3)
    skull = make_phantom(1, (48, 48, 36), (4.4, 4.4, 4.4))
    fit = SimpleNamespace(implant=np.zeros(skull.shape, dtype=bool))
    context = SimpleNamespace(rim_fit=lambda: fit, skull=skull, implant_quality=lambda *a: pytest.fail("scored"))
    assert not on_vault(hole.direction)
    assert defect.closed_as_vault(context, [hole]) == ""
    assert defect.closed_as_vault(context, []) == ""


def test_the_decisions_score_is_the_rimfit_sources_score(pitched_frontal, monkeypatch):
    """The decision scores the rim fit's implant; the Completer scoring the same implant as the rimfit source's
    proposal takes that score instead of computing it again. An implant of other content is scored anew."""
    import SkullVAELib.implant.quality as quality_module

    scored = []
    real = quality_module.implant_quality
    monkeypatch.setattr(quality_module, "implant_quality", lambda *a, **k: scored.append(1) or real(*a, **k))
    skull, _ = pitched_frontal
    result = Completer(CompletionSettings(rimfit=NO_MIRROR)).complete(skull)
    assert result.source == "rimfit" and len(scored) == 1
    context = CompletionContext(skull, CompletionSettings(rimfit=NO_MIRROR), ModelFolder(None))
    implant = result.implant.mask.copy()
    first = context.implant_quality(implant, "cranial")
    assert context.implant_quality(implant.copy(), "cranial") is first and len(scored) == 2
    implant[tuple(np.argwhere(implant)[0])] = False  # the same array, one voxel less: another implant
    assert context.implant_quality(implant, "cranial") is not first and len(scored) == 3


def test_an_enclosed_hole_outside_the_vault_is_named_where_it_points(monkeypatch, pitched_frontal):
    """An enclosed hole in the face's sector is taken as facial; without a facial source the error says where the
    hole points (a frontal vault defect of a head pitched forehead-down lies there too) and does not call the
    skull complete."""
    elevation, ahead = np.radians(10.0), np.radians(30.0)  # 10° up, 30° from straight ahead (LPS: anterior -y)
    direction = np.array([np.sin(ahead), -np.cos(ahead), np.sin(elevation)])
    hole = SimpleNamespace(direction=direction / np.linalg.norm(direction), solid_angle_sr=0.3)
    fit = SimpleNamespace(
        holes_in_lps=lambda: [hole], messages=[], implant=np.zeros(pitched_frontal[0].shape, dtype=bool)
    )
    monkeypatch.setattr(CompletionContext, "rim_fit", lambda self: fit)
    with pytest.raises(SkullVAEError) as error:
        Completer(CompletionSettings(rimfit=NO_MIRROR)).complete(pitched_frontal[0])
    text = str(error.value)
    assert "the enclosed hole found points into the face's sector (10° above the horizontal, 31° from" in text
    assert "pitched forehead-down" in text and "complete skull" not in text and "give --defect cranial" in text
