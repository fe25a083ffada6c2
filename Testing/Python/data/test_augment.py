"""Training augmentation on the model grid (SkullVAELib.data.augment), on phantoms."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.augment import (
    AugmentConfig,
    Augmenter,
    affine_theta,
    augment_batch,
    elastic_control_points,
    elastic_field,
    fresh_defect,
    mirror,
    step_generator,
    warp,
)
from SkullVAELib.data.grid import to_model_grid
from SkullVAELib.data.phantoms import make_phantom

GRID = (32, 32, 24)
SPACING = (6.4, 6.4, 6.4)  # phantom field of view 204.8 x 204.8 x 153.6 mm on GRID


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    vols = [to_model_grid(make_phantom(s, shape=(64, 64, 48), spacing=None), GRID) for s in (1, 2)]
    return torch.from_numpy(np.stack(vols))[:, None]


def _cfg(**kw) -> AugmentConfig:
    return AugmentConfig(spacing_mm=SPACING, **kw)


def test_shape_dtype_and_range(batch):
    inputs, targets = augment_batch(batch.half(), _cfg(p_affine=1, p_elastic=1, p_cranial=0.5), step_generator(0, 0, 0))
    for t in (inputs, targets):
        assert t.shape == batch.shape and t.dtype == torch.float32
        assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    # bone is moved, not created or destroyed wholesale
    assert 0.7 < float(targets.sum()) / float(batch.sum()) < 1.3


def test_mirror_is_an_involution_and_flips_left_right(batch):
    assert torch.equal(mirror(mirror(batch)), batch)
    flipped = mirror(batch)
    assert torch.equal(flipped[:, :, 0], batch[:, :, -1])
    assert not torch.equal(flipped, batch)  # phantoms are not exactly symmetric


def test_zero_transform_is_identity(batch):
    theta = affine_theta(torch.eye(3, dtype=torch.float64)[None].repeat(2, 1, 1), torch.zeros(2, 3), GRID, SPACING)
    assert torch.allclose(warp(batch, theta), batch.float(), atol=1e-5)
    cfg = _cfg(
        p_mirror=0, p_affine=1, rotation_deg=0, translation_mm=0, scale=0, shear=0, p_elastic=0, p_cranial=0, p_facial=0
    )
    inputs, targets = augment_batch(batch, cfg, step_generator(0, 0, 0))
    assert torch.allclose(inputs, batch.float(), atol=1e-5) and torch.allclose(targets, batch.float(), atol=1e-5)


def test_translation_in_millimetres_moves_by_voxels(batch):
    # +2 voxels (12.8 mm) along X: p_in = p_out + t, so the output at i equals the input at i + 2
    theta = affine_theta(
        torch.eye(3, dtype=torch.float64)[None], torch.tensor([[2 * SPACING[0], 0.0, 0.0]]), GRID, SPACING
    )
    moved = warp(batch[:1], theta)
    assert torch.allclose(moved[0, 0, :-2], batch[0, 0, 2:].float(), atol=1e-4)


def test_seeds_reproduce_and_differ(batch):
    cfg = _cfg(p_affine=1, p_elastic=1, p_cranial=0.5, p_facial=0.5)
    a = Augmenter(cfg)(batch, torch.Generator().manual_seed(3))
    b = Augmenter(cfg)(batch, torch.Generator().manual_seed(3))
    c = Augmenter(cfg)(batch, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    aug = Augmenter(cfg)  # the internal counter: successive calls differ, a new Augmenter repeats them
    first, second = aug(batch), aug(batch)
    assert not torch.equal(first[1], second[1]) and torch.equal(Augmenter(cfg)(batch)[1], first[1])


def test_the_elastic_field_is_built_on_the_batch_device_from_the_same_draws():
    """Only the control points travel to the device (a GPU batch does not wait for a 50 MB copy)."""
    cfg, grid, spacing = _cfg(p_elastic=1), (32, 32, 16), (6.0, 6.0, 6.0)

    def offsets(device=None):
        return elastic_field(
            elastic_control_points(2, grid, spacing, cfg, step_generator(0, 1, 0)), grid, spacing, device
        )

    on_cpu = offsets()
    assert on_cpu.shape == (2, 32, 32, 16, 3) and float(on_cpu.abs().max()) > 0
    assert torch.equal(offsets(device="cpu"), on_cpu)
    assert offsets(device="meta").device.type == "meta"


def test_a_batch_without_elastic_samples_builds_no_elastic_field(batch, monkeypatch):
    """The full field (50 MB per 4 volumes at 128×128×64) is interpolated only when a volume uses it."""
    from SkullVAELib.data import augment

    cfg = _cfg(p_elastic=0.0, p_affine=1.0, p_cranial=0.5, p_facial=0.5)
    expected = augment_batch(batch, cfg, step_generator(0, 3, 0))

    def refuse(*args, **kwargs):
        raise AssertionError("the elastic field was built for a batch that does not use it")

    monkeypatch.setattr(augment, "elastic_field", refuse)
    got = augment_batch(batch, cfg, step_generator(0, 3, 0))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    with pytest.raises(AssertionError, match="elastic field"):
        augment_batch(batch, dataclasses.replace(cfg, p_elastic=1.0), step_generator(0, 3, 0))


def test_fresh_cranial_defect_only_on_the_vault(batch):
    bone = batch[0, 0] > 0.5
    z_bone = bone.nonzero()[:, 2].float()
    mid = float((z_bone.min() + z_bone.max()) / 2)
    for seed in range(6):
        region = fresh_defect(bone, "cranial", SPACING, _cfg(), step_generator(seed, 0, 0))
        removed = region & bone
        assert int(removed.sum()) > 0.005 * int(bone.sum())
        assert float(removed.nonzero()[:, 2].float().min()) >= mid - 2  # upper half (vault)


def test_fresh_facial_defect_only_in_front(batch):
    bone = batch[0, 0] > 0.5
    idx = bone.nonzero().float()
    y_front, z_low = float(idx[:, 1].min()), float(idx[:, 2].min())
    region = fresh_defect(bone, "facial", SPACING, _cfg(), step_generator(0, 0, 0))
    removed = (region & bone).nonzero().float()
    assert len(removed) > 0
    assert float(removed[:, 1].max()) <= y_front + 44.0 / SPACING[1] + 1  # within 44 mm of the front
    assert float(removed[:, 2].max()) <= z_low + 0.6 * (float(idx[:, 2].max()) - z_low) + 1  # lower part


def test_defect_inputs_only_remove_bone_and_targets_follow_the_option(batch):
    cfg = _cfg(p_mirror=0, p_affine=0, p_elastic=0, p_cranial=1.0, p_facial=0)
    inputs, targets = augment_batch(batch, cfg, step_generator(1, 0, 0))
    assert torch.equal(targets, batch.float())  # complete target: the skull before the cut
    assert bool((inputs <= targets).all()) and float(inputs.sum()) < float(targets.sum())
    inputs2, targets2 = augment_batch(batch, dataclasses.replace(cfg, defect_target="input"), step_generator(1, 0, 0))
    assert torch.equal(inputs2, inputs) and torch.equal(targets2, inputs2)


def test_bad_settings_and_batches_are_one_line_errors():
    with pytest.raises(SkullVAEError, match="p_mirror"):
        AugmentConfig(p_mirror=2)
    with pytest.raises(SkullVAEError, match="defect_target"):
        AugmentConfig(defect_target="other")
    with pytest.raises(SkullVAEError, match="depths > 0"):
        AugmentConfig(facial_depth_mm=0.0)
    with pytest.raises(SkullVAEError, match=r"\(B, 1, X, Y, Z\)"):
        Augmenter()(torch.zeros(2, 32, 32, 16))


def test_the_trainer_calls_the_batch_transform_and_uses_its_target(tmp_path, batch):
    from SkullVAELib.core.config import NetworkConfig, TrainConfig
    from SkullVAELib.vae.networks import VAE
    from SkullVAELib.vae.stages import train_stage1

    data = torch.nn.functional.avg_pool3d(batch.float(), 2).repeat(2, 1, 1, 1, 1)[
        :, :, :16, :16, :8
    ]  # (4, 1, 16, 16, 8)
    net = NetworkConfig(grid=(16, 16, 8), channels=(4, 8), latent_size=4)
    cfg = TrainConfig(epochs=2, batch_size=2, seed=0, device="cpu", checkpoint_every=0)
    calls = []

    def spy(target_of):
        def transform(x, generator):
            calls.append(tuple(x.shape))
            return x, target_of(x)

        return transform

    torch.manual_seed(0)
    same = train_stage1(VAE(net), data, cfg, tmp_path / "a", batch_transform=spy(lambda x: x))
    assert calls == [(2, 1, 16, 16, 8)] * 4  # 2 batches x 2 epochs
    torch.manual_seed(0)
    other = train_stage1(VAE(net), data, cfg, tmp_path / "b", batch_transform=spy(lambda x: 1.0 - x))
    assert same[0]["dice_score"] != pytest.approx(other[0]["dice_score"], abs=1e-3)
    torch.manual_seed(0)
    hist = train_stage1(VAE(net), data, cfg, tmp_path / "c", batch_transform=Augmenter(_cfg(p_cranial=0.5)))
    assert len(hist) == 2 and all(np.isfinite(r["dice"]) for r in hist)


def test_cli_train_augment_records_its_settings_and_rejects_bad_ones(tmp_path, capsys):
    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.cli import main
    from SkullVAELib.io.image import write_mask

    data_dir = tmp_path / "data"
    for seed in range(2):
        path = data_dir / "complete_skull" / f"{seed:03d}.nrrd"
        write_mask(make_phantom(seed, shape=(64, 64, 48), spacing=None), path)
    base = ["train", "--data", str(data_dir), "--preset", "test", "--batch", "2", "--device", "cpu"]
    base += ["--stage", "1", "--epochs", "1", "--cache-dir", str(tmp_path / "cache"), "--progress", "none"]
    argv = [*base, "--out", str(tmp_path / "m"), "--augment", "--augment-defects", "0.5,0.2"]
    assert main([*argv, "--augment-target", "input", "--augment-spacing", "6.4,6.4,4.8"]) == 0
    info = ModelBundle.load(tmp_path / "m").info["augment"]
    assert info["p_cranial"] == 0.5 and info["p_facial"] == 0.2 and info["defect_target"] == "input"
    assert info["spacing_mm"] == [6.4, 6.4, 4.8]
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "bad"), "--augment", "--augment-defects", "0.9,0.5"]) == 2
    err = capsys.readouterr().err
    assert "p_cranial + p_facial" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
