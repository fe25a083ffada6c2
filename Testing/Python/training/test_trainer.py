"""The two-stage trainer: determinism, exact resume, crash-safe checkpoints, logs, bad inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import phantom_data

from SkullVAELib.core.config import TrainConfig, network_preset
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.training import checkpoint as ckpt
from SkullVAELib.training.log import read_log
from SkullVAELib.vae.networks import VAE, Decoder
from SkullVAELib.vae.stages import train_stage1, train_stage2

NET = network_preset("test")  # 32³, channels (8, 16, 32, 64), d = 8


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return phantom_data()


def fresh_vae(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(NET)


def cfg1(**kw) -> TrainConfig:
    base = {"beta": 1.0, "epochs": 3, "checkpoint_every": 1, "device": "cpu", "lr": 1e-3}
    return TrainConfig(**{**base, **kw})


def losses(history: list[dict]) -> list[tuple[float, float]]:
    return [(r["dice"], r["kld"]) for r in history]


def test_same_seed_same_losses_and_weights(data, tmp_path):
    a, b = fresh_vae(), fresh_vae()
    ha = train_stage1(a, data, cfg1(), tmp_path / "a")
    hb = train_stage1(b, data, cfg1(), tmp_path / "b")
    assert losses(ha) == losses(hb)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    hc = train_stage1(fresh_vae(), data, cfg1(seed=1), tmp_path / "c")
    assert losses(hc) != losses(ha)  # the seed matters (shuffle and ε)


def test_resume_continues_exactly(data, tmp_path):
    full = train_stage1(fresh_vae(), data, cfg1(epochs=4), tmp_path / "full")
    part_dir = tmp_path / "part"
    first = train_stage1(fresh_vae(), data, cfg1(epochs=2), part_dir)
    assert losses(first) == losses(full[:2])
    # A different model object (other init) resumes: everything comes from the checkpoint.
    resumed = train_stage1(fresh_vae(seed=7), data, cfg1(epochs=4), part_dir, resume=True)
    assert losses(resumed) == losses(full)
    assert [r["epoch"] for r in read_log(part_dir / "training_log.csv")] == [1, 2, 3, 4]


def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(data, tmp_path):
    full = train_stage1(fresh_vae(), data, cfg1(epochs=3, checkpoint_every=100), tmp_path / "full")
    calls = []

    def interrupt_at_step_3(stage, fraction, message):
        calls.append(fraction)
        if len(calls) == 3:  # 8 volumes / batch 4 = 2 steps per epoch: epoch 2, step 1
            raise KeyboardInterrupt

    out = tmp_path / "int"
    with pytest.raises(KeyboardInterrupt):
        train_stage1(fresh_vae(), data, cfg1(epochs=3, checkpoint_every=100), out, progress=interrupt_at_step_3)
    saved = ckpt.load_checkpoint(out / "checkpoints" / "stage1.pt")
    assert (saved["epoch"], saved["step"]) == (1, 1)
    resumed = train_stage1(fresh_vae(), data, cfg1(epochs=3, checkpoint_every=100), out, resume=True)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert resumed[1]["dice"] == pytest.approx(full[1]["dice"], rel=1e-12)
    assert losses(resumed)[2] == losses(full)[2]


def test_checkpoint_survives_a_failing_write(data, tmp_path, monkeypatch):
    out = tmp_path / "m"
    train_stage1(fresh_vae(), data, cfg1(epochs=1), out)
    path = out / "checkpoints" / "stage1.pt"
    before = ckpt.load_checkpoint(path)

    def half_write_then_fail(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", half_write_then_fail)
    with pytest.raises((OSError, SkullVAEError), match="disk full"):
        train_stage1(fresh_vae(), data, cfg1(epochs=2), out, resume=True)
    after = ckpt.load_checkpoint(path)
    assert after["epoch"] == before["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["stage1.pt"]  # no temp file left behind


def test_checkpoint_survives_a_kill_mid_write(tmp_path):
    path = tmp_path / "checkpoints" / "stage1.pt"
    ckpt.save_checkpoint(path, {"epoch": 1, "weights": torch.arange(4.0)})
    script = textwrap.dedent(f"""
        import os, signal, torch
        from SkullVAELib.training import checkpoint as ckpt
        def dying_save(obj, f, *a, **k):
            with open(f, "wb") as fh:
                fh.write(b"PK\\x03\\x04" + b"x" * 1000)
                fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        ckpt.torch.save = dying_save
        ckpt.save_checkpoint({str(path)!r}, {{"epoch": 2, "weights": torch.zeros(4)}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    survived = ckpt.load_checkpoint(path)
    assert survived["epoch"] == 1 and torch.equal(survived["weights"], torch.arange(4.0))


def test_bad_checkpoints_give_one_line_errors(data, tmp_path):
    with pytest.raises(SkullVAEError, match="no checkpoint to resume from"):
        train_stage1(fresh_vae(), data, cfg1(), tmp_path / "none", resume=True)
    bad = tmp_path / "bad" / "checkpoints" / "stage1.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SkullVAEError, match="not a readable checkpoint"):
        train_stage1(fresh_vae(), data, cfg1(), tmp_path / "bad", resume=True)
    out = tmp_path / "ok"
    train_stage1(fresh_vae(), data, cfg1(epochs=1), out)
    with pytest.raises(SkullVAEError, match="beta"):
        train_stage1(fresh_vae(), data, cfg1(epochs=2, beta=100.0), out, resume=True)
    with pytest.raises(SkullVAEError, match="same data"):
        train_stage1(fresh_vae(), data[:4], cfg1(epochs=2), out, resume=True)
    with pytest.raises(SkullVAEError, match=r"\(N, 1, X, Y, Z\)"):
        train_stage1(fresh_vae(), data[:, 0], cfg1(), tmp_path / "shape")
    with pytest.raises(SkullVAEError, match="device"):
        train_stage1(fresh_vae(), data, cfg1(device="tpu"), tmp_path / "dev")


def test_a_changed_lr_on_resume_is_refused(tmp_path):
    """--lr is a resume key of both VAE stages (as of the refiner's and the residual's): a changed one is
    refused in one line instead of being ignored while the checkpoint records it."""
    data = phantom_data(n=4)
    vae = fresh_vae()
    train_stage1(vae, data, cfg1(epochs=1), tmp_path)
    with pytest.raises(SkullVAEError, match="lr=0.001, not 1e-06"):
        train_stage1(fresh_vae(), data, cfg1(epochs=2, lr=1e-6), tmp_path, resume=True)
    train_stage2(vae.encoder, Decoder(NET), data, cfg1(stage=2, epochs=1), tmp_path)
    with pytest.raises(SkullVAEError, match="lr=0.001, not 1e-06"):
        train_stage2(vae.encoder, Decoder(NET), data, cfg1(stage=2, epochs=2, lr=1e-6), tmp_path, resume=True)


def test_stage2_freezes_encoder_trains_new_decoder_and_logs(data, tmp_path):
    vae = fresh_vae()
    h1 = train_stage1(vae, data, cfg1(epochs=2, beta=100.0), tmp_path)
    enc_before = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    torch.manual_seed(3)
    decoder = Decoder(NET)
    dec_before = {k: v.clone() for k, v in decoder.state_dict().items()}
    h2 = train_stage2(vae.encoder, decoder, data, cfg1(stage=2, epochs=2), tmp_path)
    assert all(torch.equal(v, vae.encoder.state_dict()[k]) for k, v in enc_before.items())  # BN stats too
    assert not any(p.requires_grad for p in vae.encoder.parameters())
    assert any(not torch.equal(v, decoder.state_dict()[k]) for k, v in dec_before.items())
    assert all(r["beta_kld"] == 0 and r["kld"] > 0 for r in h2)
    rows = read_log(tmp_path / "training_log.csv")
    assert [(r["stage"], r["epoch"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert rows[0]["dice"] == pytest.approx(h1[0]["dice"], rel=1e-5)
    assert not (tmp_path / "curves.png").exists()  # the engine draws nothing; the workflow draws the curves
    assert (tmp_path / "checkpoints" / "stage2.pt").is_file()


def test_stage2_resume_and_latent_options(data, tmp_path):
    vae = fresh_vae()
    train_stage1(vae, data, cfg1(epochs=1, beta=100.0), tmp_path / "s1")

    def run(out, epochs, resume=False, mode="sample"):
        torch.manual_seed(3)
        return train_stage2(
            vae.encoder, Decoder(NET), data, cfg1(stage=2, epochs=epochs, stage2_latent=mode), out, resume=resume
        )

    full = run(tmp_path / "full", 3)
    run(tmp_path / "part", 1)
    assert losses(run(tmp_path / "part", 3, resume=True)) == losses(full)
    fixed = run(tmp_path / "fixed", 3, mode="mu_plus_sigma")
    assert losses(fixed) != losses(full)
    other = fresh_vae(seed=5)  # a different stage-1 encoder must not resume this stage 2
    with pytest.raises(SkullVAEError, match="latents"):
        torch.manual_seed(3)
        train_stage2(other.encoder, Decoder(NET), data, cfg1(stage=2, epochs=3), tmp_path / "part", resume=True)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_micro_batches_accumulate_the_same_samples(data, tmp_path):
    """Gradient accumulation sees every sample once per epoch; losses differ only by BN statistics."""
    h = train_stage1(fresh_vae(), data, cfg1(epochs=1), tmp_path, micro_batches=2)
    assert h[0]["samples"] == 8
    with pytest.raises(SkullVAEError, match="cannot fill one batch"):
        train_stage1(fresh_vae(), data[:1], cfg1(epochs=1), tmp_path / "few", micro_batches=2)


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    from SkullVAELib.cli import main

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    base = ["train", "--data", str(data_dir), "--progress", "none"]
    assert main([*base, "--out", str(tmp_path / "m"), "--grid", "96,96,40"]) == 2
    assert "cannot be divided by 2^6" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "m"), "--stage", "2", "--preset", "test"]) == 2
    err = capsys.readouterr().err
    assert "not a SkullVAE model bundle" in err and len(err.strip().splitlines()) == 1
    assert main([*base, "--out", str(tmp_path / "m"), "--preset", "test", "--resume"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "m"), "--preset", "test", "--train-ids", "005-001"]) == 2
    assert "runs backwards" in capsys.readouterr().err


def test_train_ids_parsing(tmp_path):
    from SkullVAELib.data.case_ids import parse_id_spec

    def parse_ids(spec):
        ids = parse_id_spec(spec)
        return None if ids is None else set(ids)

    assert parse_ids("000-002,phantom_007") == {"000", "001", "002", "phantom_007"}
    listing = tmp_path / "ids.txt"
    listing.write_text("# training cases\n010\n011-012\n")
    assert parse_ids(str(listing)) == {"010", "011", "012"}
    assert parse_ids(None) is None


def test_cli_trains_both_stages_into_a_bundle_and_resumes(tmp_path, capsys):
    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.cli import main
    from SkullVAELib.io.image import write_mask

    data_dir = tmp_path / "data"
    for seed in range(4):
        write_mask(
            make_phantom(seed, shape=(64, 64, 48), spacing=None), data_dir / "complete_skull" / f"{seed:03d}.nrrd"
        )
    model = tmp_path / "model"
    argv = [
        "train",
        "--data",
        str(data_dir),
        "--out",
        str(model),
        "--preset",
        "test",
        "--batch",
        "2",
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--epochs2",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--progress",
        "none",
        "--train-ids",
        "000-002",
    ]
    assert main(argv) == 0
    bundle = ModelBundle.load(model)
    assert bundle.kind == "aggregated"
    assert bundle.info["beta"] == 100.0 and bundle.info["train_cases"] == 3
    assert bundle.info["epochs_stage1"] == 2 and bundle.info["epochs_stage2"] == 1
    assert len(bundle.info["data_manifest_hash"]) >= 16
    assert {"training_log.csv", "curves.png", "checkpoints"} <= {p.name for p in model.iterdir()}
    # One more epoch of each stage from the checkpoints.
    assert (
        main(
            [*argv[:-4], "--progress", "none", "--train-ids", "000-002", "--epochs", "3", "--epochs2", "2", "--resume"]
        )
        == 0
    )
    rows = read_log(model / "training_log.csv")
    assert [(r["stage"], r["epoch"]) for r in rows] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
    # Stage 2 alone on the existing bundle: it replaces the stage-2 decoder, so only with --overwrite.
    assert main([*argv, "--stage", "2", "--stage2-latent", "mu_plus_sigma"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--stage", "2", "--stage2-latent", "mu_plus_sigma", "--overwrite"]) == 0
    assert ModelBundle.load(model).info["stage2_latent"] == "mu_plus_sigma"


def test_cpu_bf16_training_tracks_float32(data, tmp_path):
    """bf16 autocast on the CPU (``precision`` "bf16", or "auto" on a CPU with native bf16) trains
    the same model to within bf16 rounding."""
    exact = train_stage1(fresh_vae(), data, cfg1(epochs=2, precision="fp32"), tmp_path / "fp32")
    fast = train_stage1(fresh_vae(), data, cfg1(epochs=2, precision="bf16"), tmp_path / "bf16")
    for (dice_a, kld_a), (dice_b, kld_b) in zip(losses(exact), losses(fast), strict=True):
        assert np.isfinite([dice_b, kld_b]).all()
        assert abs(dice_a - dice_b) <= 0.02 * dice_a
        assert abs(kld_a - kld_b) <= 0.1 * kld_a + 0.5
