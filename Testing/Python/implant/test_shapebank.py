"""The shape bank: complete skulls' ray maps as the rim fit's cue where the mirror gives none (issue 24)."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAELib.bundle.folder import SHAPES_FILE, ModelFolder
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.implant import raycast
from SkullVAELib.implant.rimfit import rim_fit
from SkullVAELib.implant.shapebank import (
    ShapeBank,
    build_shape_bank,
    load_shape_bank,
    rank_members,
    save_shape_bank,
)
from SkullVAELib.io.image import SkullImage
from SkullVAELib.pipeline.completer import Completer
from SkullVAELib.pipeline.settings import CompletionSettings, RimFitSettings

SPACING, HALF = 1.5, 46  # a 93³ grid of 1.5 mm about the origin
UP = np.array([0.0, 0.0, 1.0])  # LPS superior: the vault's top
HOLE_DEG, BUMP_SIGMA_DEG = 28.0, 9.0


def _shell(scale: float, bump_mm: float, hole: bool) -> tuple[SkullImage, np.ndarray]:
    """A shell 6 mm thick whose outer radius (56 mm × ``scale``) rises by ``bump_mm`` in a bump at the
    top (σ 9°), with (or without) a 28° cap cut away over the bump: (skull, the cut bone)."""
    axis = (np.arange(2 * HALF + 1) - HALF) * SPACING
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    r = np.sqrt(x * x + y * y + z * z)
    angle = np.degrees(np.arccos(np.clip(z / np.maximum(r, 1e-9), -1.0, 1.0)))
    outer = scale * 56.0 + bump_mm * np.exp(-0.5 * (angle / BUMP_SIGMA_DEG) ** 2)
    bone = (r <= outer) & (r >= outer - 6.0)
    cut = bone & (angle < HOLE_DEG) if hole else np.zeros_like(bone)
    origin = np.full(3, -HALF * SPACING)
    return SkullImage(bone & ~cut, origin, np.full(3, SPACING)), cut


# The rim these phantoms are built for: 5-12 cells (10-24°) out, where the bump has flattened, and no
# 0.5 mm thinning test (``trim_mm``), which on 1.5 mm voxels reads the thickness's voxel steps.
_FLAT_RIM = {"ring": (5, 12), "trim_mm": 0.0}


@pytest.fixture(scope="module")
def bumped_bank() -> ShapeBank:
    skulls = [(f"{n:03d}", _shell(scale, 4.0, hole=False)[0]) for n, scale in enumerate((0.94, 1.0, 1.06))]
    return build_shape_bank(skulls, step_deg=2.0)


def test_the_nearest_skulls_bring_the_shape_the_rim_cannot_tell(bumped_bank):
    """A hole over a bump with a flat rim: the spline alone fills it flat; the bank's skulls, scaled to the
    rim, put the bump back, and the patient's bone is not touched."""
    from SkullVAELib.implant.rimfit import RimFitConfig

    defective, truth = _shell(1.03, 4.0, hole=True)
    cfg = RimFitConfig(step_deg=2.0, shape_neighbours=2, **_FLAT_RIM)
    plain = rim_fit(defective, cfg)
    cued = rim_fit(defective, cfg, shapes=bumped_bank)
    assert [h.source for h in plain.holes] == ["spline"] and [h.source for h in cued.holes] == ["shapes+spline"]
    assert cued.cue == "shapes" and plain.cue == ""
    assert not (cued.implant & defective.mask).any()
    before, after = dice(plain.implant, truth), dice(cued.implant, truth)
    assert after >= 0.8 and after > before + 0.05, (before, after)


def test_a_bank_on_another_ray_grid_is_not_used_and_the_result_says_so(bumped_bank):
    """A bank cast on 2° given to a rim fit that casts on 3°: the plain spline's implant, and a message
    that names both grids and the command that rebuilds the bank."""
    from SkullVAELib.implant.rimfit import RimFitConfig

    defective, _ = _shell(1.03, 4.0, hole=True)
    cfg = RimFitConfig(step_deg=3.0, shape_neighbours=2)
    plain = rim_fit(defective, cfg)
    other = rim_fit(defective, cfg, shapes=bumped_bank)
    assert [h.source for h in other.holes] == ["spline"] and other.cue == ""
    np.testing.assert_array_equal(other.implant, plain.implant)
    [message] = [m for m in other.messages if "shape cue" in m]
    assert "2° ray grid" in message and "3°" in message and "build-shapes --overwrite" in message
    assert not any("shape cue" in m for m in plain.messages)


def test_members_are_ranked_by_their_shape_on_the_rim_not_their_size():
    rng = np.random.default_rng(0)
    alpha, beta = raycast.angle_grid(4.0)
    a, b = np.meshgrid(alpha, beta, indexing="ij")
    members = np.stack([80.0 + 4.0 * np.sin(k * a + rng.uniform(0, 6)) * np.cos(k * b) for k in (2, 3, 4, 5)])
    bank = ShapeBank(
        4.0, members.astype(np.float32), np.full_like(members, 6.0, dtype=np.float32), ("a", "b", "c", "d")
    )
    hole = (np.abs(a - 1.2) < 0.3) & (np.abs(b - 0.5) < 0.3)
    rim = (np.abs(a - 1.2) < 0.6) & (np.abs(b - 0.5) < 0.6) & ~hole
    direction = raycast.directions(np.array(1.2), np.array(0.5))
    ranked = rank_members(bank, 1.1 * members[2], rim, hole, direction)
    assert ranked[0][1] == 2 and ranked[0][0] < 1e-4 and ranked[0][2] == pytest.approx(1.1)
    assert ranked[1][0] > 0.01
    bank.r_out[0][hole] = np.nan  # a member without bone over the hole is not compared
    assert 0 not in [m for _, m, _ in rank_members(bank, members[1], rim, hole, direction)]


def test_a_bank_round_trips_and_bad_files_are_one_line_errors(bumped_bank, tmp_path):
    path = tmp_path / SHAPES_FILE
    save_shape_bank(bumped_bank, path)
    back = load_shape_bank(path)
    assert back.ids == bumped_bank.ids and back.step_deg == 2.0
    np.testing.assert_array_equal(back.r_out, bumped_bank.r_out)
    np.testing.assert_array_equal(back.thickness, bumped_bank.thickness)
    assert [p.name for p in tmp_path.iterdir()] == [SHAPES_FILE]  # no temporary left behind
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SkullVAEError, match="not a safetensors shape bank") as err:
        load_shape_bank(tmp_path / "junk.safetensors")
    assert "junk.safetensors" in str(err.value) and "\n" not in str(err.value)
    from safetensors.numpy import save_file

    save_file({"r_out": np.zeros((1, 2, 2), np.float32)}, str(tmp_path / "other.safetensors"), {"format": "x"})
    with pytest.raises(SkullVAEError, match="not a shape bank"):
        load_shape_bank(tmp_path / "other.safetensors")
    wrong = ShapeBank(2.0, bumped_bank.r_out[:, :-1], bumped_bank.thickness[:, :-1], bumped_bank.ids)
    save_shape_bank(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(SkullVAEError, match="maps are"):
        load_shape_bank(tmp_path / "wrong.safetensors")
    with pytest.raises(SkullVAEError, match="no such shape bank"):
        load_shape_bank(tmp_path / "missing.safetensors")


def test_a_model_folder_with_a_bank_gives_the_rim_fit_its_cue(bumped_bank, tmp_path):
    save_shape_bank(bumped_bank, tmp_path / SHAPES_FILE)
    folder = ModelFolder(tmp_path)  # a bank alone is a model folder
    assert folder.parts() == ["shapes"] and folder.has_shapes
    from SkullVAELib.implant.rimfit import RimFitConfig

    rimfit = RimFitSettings(mirror=False, config=RimFitConfig(step_deg=2.0, shape_neighbours=2, **_FLAT_RIM))
    settings = CompletionSettings(defect="cranial", rimfit=rimfit)
    defective, truth = _shell(1.03, 4.0, hole=True)
    done = Completer(settings, folder).complete(defective)
    assert done.source == "rimfit" and done.variant == "shapes"
    assert dice(done.implant.mask, truth) >= 0.8
    plain = Completer(settings, ModelFolder(None)).complete(defective)
    assert plain.variant == "" and dice(plain.implant.mask, truth) < dice(done.implant.mask, truth)
