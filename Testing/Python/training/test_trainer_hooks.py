"""Trainer hooks other modules use: per-batch augmentation (``batch_transform``) and validation with early stopping."""

from __future__ import annotations

import pytest
import torch
from conftest import phantom_data

from SkullVAELib.core.config import TrainConfig, network_preset
from SkullVAELib.training import checkpoint as ckpt
from SkullVAELib.training.log import read_log
from SkullVAELib.vae.networks import VAE, Decoder
from SkullVAELib.vae.stages import Stage1Trainer, train_stage1, train_stage2

NET = network_preset("test")


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return phantom_data()


def fresh_vae(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(NET)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"beta": 1.0, "epochs": 3, "device": "cpu", "lr": 1e-3, **kw})


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each sample left-right with probability ½, drawn from the trainer's generator."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None, None], x.flip(2), x)


def losses(history):
    return [(r["dice"], r["kld"]) for r in history]


def test_batch_transform_sees_float_batches_and_changes_training(data, tmp_path):
    seen = []

    def spy(x, generator):
        seen.append((x.dtype, tuple(x.shape), isinstance(generator, torch.Generator)))
        return random_flip(x, generator)

    augmented = train_stage1(fresh_vae(), data, cfg(epochs=2), tmp_path / "aug", batch_transform=spy)
    assert seen == [(torch.float32, (4, 1, *NET.grid), True)] * 4  # 8 volumes, batch 4, 2 epochs
    again = train_stage1(fresh_vae(), data, cfg(epochs=2), tmp_path / "aug2", batch_transform=random_flip)
    plain = train_stage1(fresh_vae(), data, cfg(epochs=2), tmp_path / "plain")
    assert losses(augmented) == losses(again)  # the augmentation's randomness is seeded
    assert losses(augmented) != losses(plain)


def test_augmented_training_resumes_exactly_after_ctrl_c(data, tmp_path):
    full = train_stage1(fresh_vae(), data, cfg(), tmp_path / "full", batch_transform=random_flip)
    calls = []

    def interrupt_at_step_3(stage, fraction, message):
        calls.append(fraction)
        if len(calls) == 3:
            raise KeyboardInterrupt

    out = tmp_path / "int"
    with pytest.raises(KeyboardInterrupt):
        train_stage1(fresh_vae(), data, cfg(), out, progress=interrupt_at_step_3, batch_transform=random_flip)
    assert "augment_state" in ckpt.load_checkpoint(out / "checkpoints" / "stage1.pt")
    resumed = train_stage1(fresh_vae(), data, cfg(), out, resume=True, batch_transform=random_flip)
    assert losses(resumed)[2] == losses(full)[2]


def test_stage2_batch_transform_reencodes_the_augmented_batch(data, tmp_path):
    vae = fresh_vae()
    train_stage1(vae, data, cfg(epochs=1, beta=100.0), tmp_path)
    torch.manual_seed(3)
    h = train_stage2(vae.encoder, Decoder(NET), data, cfg(stage=2, epochs=1), tmp_path, batch_transform=random_flip)
    assert h[0]["kld"] > 0 and 0 < h[0]["dice_score"] < 1


def test_validation_early_stopping_keeps_the_best_weights(data, tmp_path, monkeypatch):
    scores = iter([0.50, 0.60, 0.55, 0.58, 0.70])  # best after epoch 2, then 2 evaluations without improvement
    monkeypatch.setattr(Stage1Trainer, "validation_dice", lambda self: next(scores))
    vae = fresh_vae()
    out = tmp_path / "es"
    hist = train_stage1(vae, data, cfg(epochs=10, val_every=1, patience=2), out, validation=data[:4])
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4]
    assert [r["val_dice"] for r in hist] == [0.50, 0.60, 0.55, 0.58]
    assert [r["best_epoch"] for r in hist] == [1, 2, 2, 2] and hist[-1]["early_stop"] == 1
    logged = read_log(out / "training_log.csv")
    assert logged[-1]["early_stop"] == 1 and logged[-1]["best_epoch"] == 2 and "val_dice" in logged[0]
    two = fresh_vae()
    train_stage1(two, data, cfg(epochs=2), tmp_path / "two")
    for (k, a), b in zip(vae.state_dict().items(), two.state_dict().values(), strict=True):
        assert torch.equal(a, b), k  # the weights kept are epoch 2's
    # A resume of an early-stopped stage trains no further and returns the best weights.
    again = fresh_vae(seed=9)
    hist2 = train_stage1(again, data, cfg(epochs=10, val_every=1, patience=2), out, resume=True, validation=data[:4])
    assert len(hist2) == 4
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), two.state_dict().values(), strict=True))


def test_validation_dice_is_measured_every_k_epochs(data, tmp_path):
    hist = train_stage1(fresh_vae(), data, cfg(epochs=5, val_every=2), tmp_path / "v", validation=data[4:])
    assert [("val_dice" in r) for r in hist] == [False, True, False, True, True]  # every 2nd epoch and the last
    assert all(0.0 < r["val_dice"] < 1.0 for r in hist if "val_dice" in r)
    vae = fresh_vae()
    train_stage1(vae, data, cfg(epochs=1, beta=100.0), tmp_path / "s1")
    torch.manual_seed(3)
    h2 = train_stage2(vae.encoder, Decoder(NET), data, cfg(stage=2, epochs=2, val_every=1), tmp_path / "s1")
    assert all("val_dice" not in r for r in h2)  # no validation data: nothing measured
    h2 = train_stage2(
        vae.encoder, Decoder(NET), data, cfg(stage=2, epochs=2, val_every=1), tmp_path / "s2", validation=data[4:]
    )
    assert all(0.0 < r["val_dice"] < 1.0 for r in h2)


def test_cli_validation_ids_are_measured_and_kept_apart(tmp_path, capsys):
    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.cli import main
    from SkullVAELib.data.phantoms import make_phantom
    from SkullVAELib.io.image import write_mask

    data_dir = tmp_path / "data"
    for seed in range(4):
        write_mask(
            make_phantom(seed, shape=(64, 64, 48), spacing=None), data_dir / "complete_skull" / f"{seed:03d}.nrrd"
        )
    argv = ["train", "--data", str(data_dir), "--preset", "test", "--batch", "2", "--device", "cpu", "--stage", "1"]
    argv += ["--epochs", "2", "--cache-dir", str(tmp_path / "cache"), "--progress", "none", "--train-ids", "000-002"]
    assert main([*argv, "--out", str(tmp_path / "m"), "--val-ids", "003", "--val-every", "1", "--patience", "5"]) == 0
    rows = read_log(tmp_path / "m" / "training_log.csv")
    assert all(0 < r["val_dice"] < 1 for r in rows) and rows[-1]["best_epoch"] in (1, 2)
    assert ModelBundle.load(tmp_path / "m").info["validation_case_ids"] == ["003"]
    assert main([*argv, "--out", str(tmp_path / "bad"), "--val-ids", "002-003"]) == 2
    assert "share case ids: 002" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("trainer", "kept"),
    [("stage1", [3, 4]), ("stage2", [1, 3, 4]), ("refiner", [1, 2, 4]), ("residual", [1, 2, 3])],
)
def test_a_run_rewrites_only_its_own_rows_of_the_shared_log(trainer, kept, tmp_path):
    """A VAE stage replaces its own and the later VAE stage's rows; the refiner (3) and the residual (4)
    only their own: training one never deletes the other's rows."""
    from SkullVAELib.implant.learned.train import RefinerTrainer
    from SkullVAELib.implant.residual.train import ResidualTrainer
    from SkullVAELib.training.distributed import DistContext
    from SkullVAELib.training.log import LOG_NAME, write_log
    from SkullVAELib.vae.stages import Stage2Trainer

    kind = {"stage1": Stage1Trainer, "stage2": Stage2Trainer, "refiner": RefinerTrainer, "residual": ResidualTrainer}
    write_log(tmp_path / LOG_NAME, [{"stage": s, "epoch": 1, "loss": 0.5, "step": 1} for s in (1, 2, 3, 4)])
    run = kind[trainer].__new__(kind[trainer])  # only what writing the log needs
    run.ctx, run.out_dir = DistContext(), tmp_path
    run.history = [{"stage": run.stage, "epoch": 1, "loss": 0.1, "step": 9}]
    run._write_logs()
    rows = read_log(tmp_path / LOG_NAME)
    assert [(r["stage"], r["step"]) for r in rows] == sorted([(s, 1) for s in kept] + [(run.stage, 9)])
