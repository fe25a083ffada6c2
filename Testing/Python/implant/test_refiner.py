"""The learned facial refiner (issue 9, lever 4): LPS grid, face crop, drawn defects, stored
weights and inference, on small phantom grids (training and the CLI: test_refiner_training.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.defects import case_seed, facial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.data.recipes import FACIAL
from SkullVAELib.data.regions import bone_bounds, facial_region
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.implant.learned.config import REFINER_FORMAT, RefinerConfig, load_refiner, save_refiner
from SkullVAELib.implant.learned.crop import crop_start, cut, face_anchor, paste, sample_crop
from SkullVAELib.implant.learned.infer import learned_implant
from SkullVAELib.implant.learned.lps_grid import from_lps_grid, to_lps_grid
from SkullVAELib.implant.learned.train import RefinerTrainConfig, defect_sample, random_matrix, to_device
from SkullVAELib.io.image import SkullImage

SHAPE, SPACING = (64, 64, 48), (3.2, 3.2, 3.2)
TINY = RefinerConfig(spacing_mm=4.0, crop_shape=(32, 32, 32), channels=(4, 8, 16), crop_offset_mm=(-64, -32, -8))


def oblique(image: SkullImage, degrees: float = 20.0) -> SkullImage:
    """``image``'s mask with its direction rotated by ``degrees`` about z (and a shifted origin)."""
    a = np.deg2rad(degrees)
    rotation = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    return SkullImage(image.mask, image.origin + [10.0, -20.0, 5.0], image.spacing, rotation @ image.direction)


def bounds_mm(image: SkullImage, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) mm of ``image``'s bone voxel centres (or of its bone's index box), by :func:`regions.bone_bounds`."""
    lo, hi = bone_bounds(torch.from_numpy(image.mask), image.origin, image.spacing, image.direction, exact)
    return lo.numpy(), hi.numpy()


def lps_bone(image: SkullImage, spacing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(bool (X, Y, Z), origin (3,)) of ``image`` on its refiner grid at ``spacing`` mm."""
    fraction, grid = to_lps_grid(image, spacing)
    return torch.from_numpy(fraction >= 0.5), torch.tensor(grid.origin, dtype=torch.float32)


class ConstantLogit(torch.nn.Module):
    """A stand-in network: the same logit everywhere, in the shape of its input."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.value)


# --- lps_grid ---------------------------------------------------------------------------------
def test_an_oblique_skull_goes_to_the_lps_grid_and_back_onto_its_exact_grid():
    skull = oblique(make_phantom(3, SHAPE, SPACING))
    fraction, grid = to_lps_grid(skull, spacing_mm=2.0, margin_mm=8.0)
    assert fraction.shape == grid.shape and fraction.dtype == np.float32
    assert 0.0 <= fraction.min() and fraction.max() <= 1.0
    lo, hi = bounds_mm(skull, exact=False)
    np.testing.assert_allclose(grid.origin, lo - 8.0, atol=1e-9)  # the bone box's lower bound minus the margin
    assert np.all(np.asarray(grid.origin) + 2.0 * (np.asarray(grid.shape) - 1) >= hi + 8.0 - 1e-9)
    back = from_lps_grid(fraction, grid, skull)
    assert back.shape == skull.shape and back.dtype == np.float32
    assert dice(back >= 0.5, skull.mask) > 0.85
    with pytest.raises(SkullVAEError, match="do not match"):
        from_lps_grid(fraction[:-1], grid, skull)


def test_the_lps_grid_refuses_an_empty_skull_and_a_bad_spacing():
    empty = SkullImage(np.zeros((8, 8, 8), dtype=bool), np.zeros(3), np.ones(3))
    with pytest.raises(SkullVAEError, match="empty"):
        to_lps_grid(empty)
    with pytest.raises(SkullVAEError, match="positive"):
        to_lps_grid(make_phantom(3, SHAPE, SPACING), spacing_mm=0.0)


# --- crop -------------------------------------------------------------------------------------
def test_cut_then_paste_round_trips_and_is_zero_outside_the_volume():
    volume = torch.rand(2, 10, 12, 14) + 0.5  # never zero, so zeros mark "outside"
    start, shape = [-3, 2, 11], (6, 6, 6)
    crop = cut(volume, start, shape)
    assert crop.shape == (2, 6, 6, 6)
    assert torch.equal(crop[:, 3:, :, :3], volume[:, :3, 2:8, 11:14])
    assert not crop[:, :3].any() and not crop[..., 3:].any()  # x < 0 and z >= 14 lie outside
    back = paste(crop, start, (10, 12, 14))
    expected = torch.zeros_like(volume)
    expected[:, :3, 2:8, 11:14] = volume[:, :3, 2:8, 11:14]
    assert torch.equal(back, expected)
    assert torch.equal(paste(cut(volume, [0, 0, 0], (10, 12, 14)), [0, 0, 0], (10, 12, 14)), volume)
    assert not cut(volume, [20, 0, 0], shape).any()  # wholly outside: all zeros
    assert not paste(crop, [-10, 0, 0], (10, 12, 14)).any()


def test_sample_crop_matches_cut_without_a_matrix_and_with_the_identity():
    cfg = RefinerConfig(crop_shape=(8, 12, 16), channels=(4, 8, 16))  # not cubic: catches swapped axes
    volume = torch.rand(2, 20, 18, 24)
    start = [3, -2, 12]  # partly outside in y and z
    plain = cut(volume, start, cfg.crop_shape)
    assert torch.equal(sample_crop(volume, start, cfg), plain)
    identity = torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1)
    sampled = sample_crop(volume, start, cfg, identity)
    assert sampled.shape == plain.shape
    torch.testing.assert_close(sampled, plain, atol=1e-4, rtol=0)
    for axis in range(3):  # a whole-voxel shift of the points is the cut one voxel further on
        shifted = identity.clone()
        shifted[axis, 3] = 1.0
        moved = list(start)
        moved[axis] += 1
        torch.testing.assert_close(
            sample_crop(volume, start, cfg, shifted), cut(volume, moved, cfg.crop_shape), atol=1e-4, rtol=0
        )


def test_the_face_anchor_survives_a_facial_defect():
    complete = make_phantom(5, SHAPE, SPACING)
    defective, _ = facial_defect(complete, seed=0)
    anchors = [face_anchor(*lps_bone(image, 2.0), 2.0) for image in (complete, defective)]
    difference = (anchors[0] - anchors[1]).abs()
    assert difference[0] <= 4.0 and difference[2] <= 4.0  # left-right centre, lowest point
    assert difference[1] <= 20.0  # the most anterior point moves back a little at most
    bone, origin = lps_bone(complete, 2.0)
    lo, _ = bounds_mm(complete)
    assert abs(float(anchors[0][1]) - lo[1]) <= 2.0 and abs(float(anchors[0][2]) - lo[2]) <= 2.0
    with pytest.raises(SkullVAEError, match="no bone"):
        face_anchor(torch.zeros_like(bone), origin, 2.0)


# --- the facial recipe on the refiner's grid ------------------------------------------------------
def test_evaluation_slabs_remove_only_the_lower_front_and_repeat_with_the_seed():
    bone, origin = lps_bone(make_phantom(6, SHAPE, SPACING), 2.0)
    lo, hi = bone_bounds(bone, origin, 2.0)
    extent = hi - lo
    x, y, z = (origin[a] + 2.0 * torch.arange(bone.shape[a]) for a in range(3))
    for seed in range(5):
        region = facial_region(tuple(bone.shape), origin, 2.0, lo, hi, torch.Generator().manual_seed(seed), FACIAL)
        assert region.shape == bone.shape and (region & bone).any()
        index = torch.nonzero(region)
        assert y[index[:, 1]].max() <= lo[1] + 44.0 + 1e-4  # the front: 44 mm from the most anterior bone
        assert z[index[:, 2]].max() <= lo[2] + 0.6 * extent[2] + 1e-4  # the lower 45-60 %
        assert z[index[:, 2]].max() >= lo[2] + 0.45 * extent[2] - 2.0 - 1e-4
        width = x[index[:, 0]].max() - x[index[:, 0]].min()
        assert width >= 0.6 * extent[0] - 2.0 - 1e-4  # 60-100 % of the width (to a voxel)
        again = facial_region(tuple(bone.shape), origin, 2.0, lo, hi, torch.Generator().manual_seed(seed), FACIAL)
        assert torch.equal(region, again)


def test_a_drawn_defect_sample_splits_the_bone_into_input_and_target():
    cfg = RefinerConfig(spacing_mm=2.0, crop_shape=(64, 64, 64), channels=(4, 8, 16), crop_offset_mm=(-64, -32, -8))
    bone, origin = lps_bone(make_phantom(6, SHAPE, SPACING), 2.0)
    skull = to_device({"006": (bone.numpy(), origin.double().numpy())}, 2.0, "cpu")["006"]
    for seed in range(3):
        x, y = defect_sample(skull, cfg, torch.Generator().manual_seed(seed), FACIAL)
        assert x.shape == y.shape == (1, 64, 64, 64)
        assert set(torch.unique(torch.cat([x, y])).tolist()) <= {0.0, 1.0}
        assert x.any() and y.any() and not (x * y).any()  # input and target never overlap
        # the same draw again, by hand: defective | implant == bone, on the crop of the defective skull's anchor
        region = facial_region(
            tuple(bone.shape),
            skull.origin,
            2.0,
            skull.lo,
            skull.hi,
            torch.Generator().manual_seed(seed),
            FACIAL,
        )
        defective = bone & ~region
        start = crop_start(face_anchor(defective, skull.origin, 2.0), skull.origin, cfg)
        assert torch.equal(x + y, cut(bone.float()[None], start, cfg.crop_shape))
        assert torch.equal(y, cut((bone & region).float()[None], start, cfg.crop_shape))
    generator = torch.Generator().manual_seed(1)
    matrix = random_matrix(RefinerTrainConfig(), 2.0, generator)
    assert matrix.shape == (3, 4)
    x, y = defect_sample(skull, cfg, generator, FACIAL, matrix)
    assert x.any() and y.any() and not (x * y).any()  # nor after the augmentation


# --- config and stored weights ----------------------------------------------------------------
def test_a_saved_refiner_loads_with_its_config_and_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    network = TINY.network().eval()
    path = tmp_path / "refiner.safetensors"
    save_refiner(path, network, TINY, {"train_ids": ["001"]})
    loaded, cfg, info = load_refiner(path)
    assert cfg == TINY and info == {"train_ids": ["001"]} and not loaded.training
    for key, value in network.state_dict().items():  # float16 storage, exactly
        assert torch.equal(loaded.state_dict()[key], value.half().float())
    x = (torch.rand(1, 1, 32, 32, 32) > 0.7).float()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), network(x), atol=1e-2, rtol=0)
    assert RefinerConfig.from_json(TINY.to_json()) == TINY


def test_the_output_head_is_part_of_the_stored_network(tmp_path):
    """With ``output_head`` the logits come from a 1×1×1 convolution after channels[0] features; a
    file written without the field (before the head existed) loads as the head-less network."""
    import json
    from dataclasses import asdict, replace

    headed = replace(TINY, output_head=True)
    network = headed.network()
    assert isinstance(network[-1], torch.nn.Conv3d) and network[-1].in_channels == TINY.channels[0]
    assert network(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 1, 32, 32, 32)
    save_refiner(tmp_path / "headed.safetensors", network, headed)
    assert load_refiner(tmp_path / "headed.safetensors")[1].output_head
    legacy = {k: v for k, v in asdict(TINY).items() if k != "output_head"}
    assert RefinerConfig.from_json(json.dumps(legacy)).output_head is False


def test_bad_refiner_files_are_one_line_errors(tmp_path):
    from safetensors.torch import save_file

    def refused(path, match):
        with pytest.raises(SkullVAEError, match=match) as caught:
            load_refiner(path)
        assert len(str(caught.value).splitlines()) == 1 and str(path) in str(caught.value)

    refused(tmp_path / "missing.safetensors", "no such refiner file")
    text = tmp_path / "text.safetensors"
    text.write_text("this is not a safetensors file\n")
    refused(text, "not a safetensors refiner file")
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "other"})
    refused(other, "not a facial refiner")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": REFINER_FORMAT, "config": TINY.to_json()})
    refused(foreign, "do not fit")
    damaged = tmp_path / "damaged.safetensors"
    save_file({"w": torch.zeros(2)}, str(damaged), metadata={"format": REFINER_FORMAT, "config": "{not json"})
    refused(damaged, "settings are missing or damaged")
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare), metadata={"format": REFINER_FORMAT})
    refused(bare, "settings are missing or damaged")


def test_the_crop_must_fit_the_unet_depth():
    with pytest.raises(SkullVAEError, match="multiples of 16"):
        RefinerConfig(crop_shape=(30, 32, 32))  # 5 channel levels: a multiple of 16
    with pytest.raises(SkullVAEError, match="multiples of 16"):
        RefinerConfig(crop_shape=(8, 16, 16))
    with pytest.raises(SkullVAEError, match="3 multiples"):
        RefinerConfig(crop_shape=(32, 32), channels=(4, 8))
    with pytest.raises(SkullVAEError, match="threshold"):
        RefinerConfig(threshold=1.0)
    assert RefinerConfig(crop_shape=(30, 32, 32), channels=(4, 8)).crop_shape == (30, 32, 32)


# --- inference --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oblique_facial_case():
    defective, _ = facial_defect(make_phantom(8, SHAPE, SPACING), seed=0)
    return oblique(defective)


def test_a_confident_refiner_fills_only_the_face_crop_and_never_the_bone(oblique_facial_case):
    skull = oblique_facial_case
    cfg = RefinerConfig(spacing_mm=2.0, crop_shape=(64, 64, 64), channels=(4, 8, 16), crop_offset_mm=(-64, -32, -8))
    before = skull.mask.copy()
    result = learned_implant(skull, ConstantLogit(20.0), cfg)
    assert np.array_equal(skull.mask, before)
    assert result.implant.shape == skull.shape and result.implant.dtype == bool
    assert result.probability_on_grid().shape == skull.shape and result.probability.shape != skull.shape
    assert result.implant.any() and not (result.implant & skull.mask).any()
    assert result.messages == [] and set(result.timings) == {"refiner_grid", "refiner_network", "refiner_back"}
    soft = float(result.probability_on_grid()[~skull.mask].sum()) * skull.voxel_volume_mm3
    assert result.expected_volume_mm3 == pytest.approx(soft, rel=1e-4)
    # every implant voxel lies in the crop, to (1 - threshold) of a grid voxel: the probability is
    # resampled linearly, so it falls from 1 to 0 over the voxel beyond the crop's last one
    bone, origin = lps_bone(skull, cfg.spacing_mm)
    start = np.array(crop_start(face_anchor(bone, origin, cfg.spacing_mm), origin, cfg))
    lo = origin.double().numpy() + cfg.spacing_mm * start
    hi = lo + cfg.spacing_mm * (np.array(cfg.crop_shape) - 1)
    points = np.argwhere(result.implant) @ skull.index_to_physical()[:3, :3].T + skull.origin
    tolerance = (1.0 - cfg.threshold) * cfg.spacing_mm + 1e-3
    assert np.all(points >= lo - tolerance) and np.all(points <= hi + tolerance)
    assert np.count_nonzero(result.implant) < np.count_nonzero(~skull.mask)  # the crop is not everything


def test_test_time_mirroring_averages_the_crop_with_its_mirror(oblique_facial_case, ramp_network):
    """The crop's x axis is the patient's left-right: a ramp fills one side, its mirror average
    is 0.5 everywhere in the crop (kept at the default threshold only where it is >= 0.5)."""
    import dataclasses

    from SkullVAELib.implant.learned.infer import crop_probability

    cfg = RefinerConfig(spacing_mm=2.0, crop_shape=(64, 64, 64), channels=(4, 8, 16))
    bone, origin = lps_bone(oblique_facial_case, cfg.spacing_mm)
    plain, _ = crop_probability(bone.numpy(), origin.numpy(), ramp_network, cfg, "cpu")
    crop = plain > 0  # the crop's part of the grid (a sigmoid is never 0)
    assert plain[crop].min() < 0.01 and plain[crop].max() > 0.99
    mirror_cfg = dataclasses.replace(cfg, test_time_mirror=True)
    mirrored, _ = crop_probability(bone.numpy(), origin.numpy(), ramp_network, mirror_cfg, "cpu")
    np.testing.assert_allclose(mirrored[crop], 0.5, atol=1e-6)
    assert not mirrored[~crop].any()


def test_a_refiner_that_sees_no_implant_says_so(oblique_facial_case):
    cfg = RefinerConfig(spacing_mm=2.0, crop_shape=(64, 64, 64), channels=(4, 8, 16))
    result = learned_implant(oblique_facial_case, ConstantLogit(-20.0), cfg)
    assert result.implant.shape == oblique_facial_case.shape and not result.implant.any()
    assert float(result.probability.max()) < 0.5
    assert any("no facial implant" in m for m in result.messages)


def test_the_learned_implant_is_volume_checked_against_its_soft_volume(oblique_facial_case):
    """The Completer takes the refiner as a part: a cleaned implant far smaller than the
    network's soft volume is flagged; a matching one is not; an empty one is explained once."""
    from SkullVAELib.bundle.folder import ModelFolder
    from SkullVAELib.implant.learned.infer import LearnedImplant
    from SkullVAELib.pipeline.completer import Completer
    from SkullVAELib.pipeline.settings import CompletionSettings

    def refine_implant(skull, refiner):
        return Completer(
            CompletionSettings(defect="facial", quality=False), ModelFolder.from_parts(refiner=refiner)
        ).complete(skull)

    skull = oblique_facial_case
    implant = np.zeros(skull.shape, dtype=bool)
    implant[tuple(np.argwhere(~skull.mask)[:2000].T)] = True
    volume = float(implant.sum()) * skull.voxel_volume_mm3

    def refiner_with(expected, implant=implant):
        whole = (slice(None),) * 3
        return lambda _: LearnedImplant(
            implant, implant.astype(np.float32), whole, {"refiner_network": 0.1}, [], expected
        )

    plausible = refine_implant(skull, refiner_with(1.2 * volume))
    assert plausible.source == "learned" and plausible.warnings == []
    flagged = refine_implant(skull, refiner_with(10 * volume))
    assert len(flagged.warnings) == 1 and "implausible facial implant volume" in flagged.warnings[0]
    empty = learned_implant(skull, ConstantLogit(-20.0), RefinerConfig(spacing_mm=2.0, crop_shape=(64, 64, 64)))
    said = refine_implant(skull, lambda _: empty).warnings
    assert len(said) == 1 and "no facial implant" in said[0]


@pytest.mark.skullfix
def test_the_face_crop_holds_the_whole_facial_implant_of_real_skulls(skullfix_dir):
    """On real SkullFix skulls (005 is oblique), the crop placed from the *defective* skull's anchors
    holds every voxel of the implant the evaluation's facial generator cuts."""
    from SkullVAELib.io.image import read_skull

    cfg = RefinerConfig()
    for case_id in ("005", "063"):  # 063: the skull whose anchor moves back the most
        complete = read_skull(skullfix_dir / "complete_skull" / f"{case_id}.nrrd", kind="binary")
        defective, implant = facial_defect(complete, case_seed(0, case_id))
        bone, grid = to_lps_grid(defective, cfg.spacing_mm)
        origin = torch.tensor(grid.origin)
        start = crop_start(face_anchor(torch.from_numpy(bone >= 0.5), origin, cfg.spacing_mm), origin, cfg)
        truth, _ = to_lps_grid(implant, cfg.spacing_mm)
        inside = cut(torch.from_numpy(truth)[None], start, cfg.crop_shape).sum()
        assert float(inside) >= 0.999 * float(truth.sum()), case_id


def test_the_probability_is_resampled_on_the_crops_box_only_with_the_same_numbers():
    """Issue 26: the facial refiner's output goes back onto the patient's grid only where the crop
    is (the rest of a 512x512x350 scan is zero anyway): what the whole grid gives, on an oblique
    grid too (ITK computes each point from the box's origin: the last float bit may differ)."""
    from SkullVAELib.implant.learned.infer import _probability_on_patient

    phantom = make_phantom(3, (64, 64, 48), (3.2, 3.2, 3.2))
    a = np.deg2rad(17.0)
    tilt = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    skull = SkullImage(phantom.mask, phantom.origin, phantom.spacing, tilt)
    cfg = RefinerConfig(spacing_mm=4.0, crop_shape=(16, 16, 16), channels=(4, 8))
    fraction, grid = to_lps_grid(skull, cfg.spacing_mm)
    start = [3, 2, 1]
    on_grid = np.zeros(grid.shape, np.float32)
    block = tuple(slice(s, s + n) for s, n in zip(start, cfg.crop_shape, strict=True))
    on_grid[block] = np.random.default_rng(0).random(cfg.crop_shape, dtype=np.float32)
    block = (np.subtract(start, 1), np.add(start, cfg.crop_shape) + 1)  # the crop and the zeros it falls to
    on_box, box = _probability_on_patient(on_grid, grid, block, skull)
    boxed = np.zeros(skull.shape, np.float32)
    boxed[box] = on_box
    whole = from_lps_grid(on_grid, grid, skull)
    assert boxed.any() and np.array_equal(boxed > 0, whole > 0) and np.allclose(boxed, whole, rtol=0, atol=1e-6)
    # the threshold and the soft volume read the box only, as the whole-scan formulas would
    from SkullVAELib.implant.learned.infer import _implant_on_box

    implant, expected = _implant_on_box(on_box, box, skull, 0.5)
    assert (
        np.array_equal(implant, (boxed >= 0.5) & ~skull.mask)
        and implant.flags.f_contiguous == skull.mask.flags.f_contiguous
    )
    assert np.isclose(expected, boxed[~skull.mask].sum(dtype=np.float64) * skull.voxel_volume_mm3)
    assert _implant_on_box(boxed, None, skull, 0.5)[1] == 0.0
