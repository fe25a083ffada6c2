"""The rim fit's cue read in the ray grid's own frame (implant/rimcue.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.implant import raycast
from SkullVAELib.implant.rimconfig import RimFitConfig
from SkullVAELib.implant.rimcue import shapes_in_frame, usable_shapes
from SkullVAELib.implant.rimfit import rim_fit
from SkullVAELib.implant.shapebank import ShapeBank
from SkullVAELib.implant.shapemodel import fit_shape_model
from SkullVAELib.io.image import SkullImage

CENTRE = np.array([3.0, -2.0, 5.0])
STEP = RimFitConfig().step_deg


def _ellipsoid(scale: float = 1.0, defect: bool = True) -> tuple[SkullImage, np.ndarray]:
    """(skull, the cut bone): an ellipsoidal shell 6 mm thick (outer semi-axes 56, 62, 50 mm × ``scale``) about
    ``CENTRE`` on a 1.5 mm grid, with a 22 mm defect 12° above the posterior pole: inside the pole clearance, so
    the rim fit turns its grid, and across the mid-plane, so the mirror gives no cue."""
    spacing, shape = np.full(3, 1.5), (86, 86, 86)
    origin = CENTRE - spacing * (np.array(shape) - 1) / 2.0
    offsets = np.indices(shape).reshape(3, -1).T * spacing + origin - CENTRE
    outer, inner = scale * np.array([56.0, 62.0, 50.0]), scale * np.array([50.0, 56.0, 44.0])
    shell = (np.linalg.norm(offsets / outer, axis=1) <= 1) & (np.linalg.norm(offsets / inner, axis=1) >= 1)
    towards = Rotation.from_euler("x", 12.0, degrees=True).apply([0.0, 1.0, 0.0])
    tip = towards / np.linalg.norm(towards / outer)
    cut = (np.linalg.norm(offsets - tip, axis=1) <= 22.0) & shell & defect
    return SkullImage((shell & ~cut).reshape(shape), origin, spacing, np.eye(3)), cut.reshape(shape)


@pytest.fixture(scope="module")
def own_bank() -> ShapeBank:
    """The ray maps (LPS) of three complete ellipsoids, the patient's own among them: a cue that is right."""
    maps = [raycast.cast(_ellipsoid(scale, defect=False)[0], CENTRE, STEP) for scale in (0.97, 1.0, 1.03)]
    r_out = np.stack([m.r_out for m in maps]).astype(np.float32)
    return ShapeBank(STEP, r_out, np.stack([m.thickness for m in maps]).astype(np.float32), ("a", "b", "c"))


def test_a_turned_frame_reads_the_shapes_where_its_rays_point(own_bank):
    """Resampled onto the turned grid, a bank member's outer radius is the complete skull's cast in that frame
    (to the nearest cell), and a shape model's domain and mean move with it; as cast it was far off."""
    defective, _ = _ellipsoid()
    turn = rim_fit(defective, centre=CENTRE).turn
    assert turn is not None and turn.degrees > 10
    complete = _ellipsoid(defect=False)[0]
    seen = raycast.cast(turn.skull(complete), CENTRE, STEP).r_out
    turned = shapes_in_frame(own_bank, turn)
    top = raycast.grid_directions(STEP)[..., 2] > 0.3  # the vault, away from the grid's poles
    assert np.nanmedian(np.abs(turned.r_out[1] - seen)[top]) < 0.5 < np.nanmedian(np.abs(own_bank.r_out[1] - seen)[top])
    model = fit_shape_model(own_bank, n_modes=2)
    turned_model, notes = usable_shapes(model, STEP, turn)
    assert notes == [] and turned_model.rays.shape == model.rays.shape
    assert (
        turned_model.mean.shape == (turned_model.rays.sum(),) and turned_model.modes.shape[1] == turned_model.rays.sum()
    )
    assert usable_shapes(model, STEP) == (model, [])


@pytest.mark.parametrize("kind", ["bank", "model"])
def test_a_hole_near_a_pole_gets_the_shapes_cue_in_the_turned_frame(own_bank, kind):
    """The patient's own shape as the cue fills the hole near the pole almost exactly in the turned frame, as
    without a turn; read as cast (before), the cue came from directions 22° away and the fill lost to the
    plain spline (DSC 0.92 against 0.95)."""
    defective, truth = _ellipsoid()
    shapes = own_bank if kind == "bank" else fit_shape_model(own_bank, n_modes=2)
    plain = rim_fit(defective, centre=CENTRE)
    cued = rim_fit(defective, centre=CENTRE, shapes=shapes)
    unturned = rim_fit(defective, RimFitConfig(pole_clearance_deg=0.0), centre=CENTRE, shapes=shapes)
    assert cued.turn is not None and cued.holes[0].source.endswith("+spline")
    assert dice(cued.implant, truth) > max(dice(plain.implant, truth) + 0.02, 0.97)
    assert dice(cued.implant, truth) == pytest.approx(dice(unturned.implant, truth), abs=0.01)
    assert not (cued.implant & defective.mask).any()
