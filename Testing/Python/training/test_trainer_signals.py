"""Issue 10, items 8-10: SIGTERM during `train`, checkpoint cadence, stale checkpoint temporaries.

Real child processes running the real ``skullvae train`` receive real signals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import phantom_data

from SkullVAELib.core.config import TrainConfig, network_preset
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.training import checkpoint as ckpt
from SkullVAELib.vae.networks import VAE
from SkullVAELib.vae.stages import train_stage1

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from SkullVAELib.io.image import write_mask

    folder = tmp_path_factory.mktemp("phantoms")
    for seed in range(4):
        write_mask(make_phantom(seed, shape=(64, 64, 48), spacing=None), folder / "complete_skull" / f"{seed:03d}.nrrd")
    return folder


def train_argv(data_dir, model, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "SkullVAELib",
        "train",
        "--data",
        str(data_dir),
        "--out",
        str(model),
        "--preset",
        "test",
        "--stage",
        "1",
        "--batch",
        "2",
        "--device",
        "cpu",
        "--cache-dir",
        str(model.parent / "cache"),
        "--progress",
        "json",
        *extra,
    ]


def run_until(argv: list[str], epoch: int) -> subprocess.Popen:
    """Start ``argv`` and return once its JSON progress reports a step of ``epoch`` (1-based)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        record = json.loads(line)  # under --progress json, stdout holds only JSON objects
        if record["stage"] == "train stage 1" and f"epoch {epoch}/" in record["message"]:
            return proc
    proc.wait()
    raise AssertionError(f"training ended before epoch {epoch}: {proc.stderr.read()}")


def test_sigterm_checkpoints_then_exits_like_ctrl_c(data_dir, tmp_path):
    model = tmp_path / "model"
    # No checkpoint is due for 1000 epochs (or 5 minutes): whatever is saved comes from SIGTERM.
    argv = train_argv(data_dir, model, "--epochs", "1000", "--checkpoint-every", "1000")
    proc = run_until(argv, epoch=3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # as for Ctrl-C
    assert "interrupted" in err and "Traceback" not in err
    saved = ckpt.load_checkpoint(model / "checkpoints" / "stage1.pt")
    assert saved["epoch"] >= 2  # saved mid-run: two epochs were done when the signal came
    done = saved["epoch"] + (1 if saved["step"] else 0)
    resumed = subprocess.run([*argv[:-4], "--epochs", str(done + 1), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr


def test_kill_9_loses_at_most_one_epoch_by_default(data_dir, tmp_path):
    model = tmp_path / "model"
    proc = run_until(train_argv(data_dir, model, "--epochs", "1000"), epoch=3)  # default cadence
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    saved = ckpt.load_checkpoint(model / "checkpoints" / "stage1.pt")  # a checkpoint to resume from
    assert saved["epoch"] >= 2 and saved["step"] == 0


def test_default_checkpoint_cadence_is_every_epoch_or_five_minutes():
    cfg = TrainConfig()
    assert (cfg.checkpoint_every, cfg.checkpoint_minutes) == (1, 5.0)


def test_wall_time_checkpoints_mid_epoch(tmp_path, monkeypatch):
    saves = []
    real = ckpt.save_checkpoint

    def record(path, state):
        saves.append((state["epoch"], state["step"]))
        real(path, state)

    monkeypatch.setattr(ckpt, "save_checkpoint", record)
    data = phantom_data(n=6)
    torch.manual_seed(0)
    cfg = TrainConfig(beta=1.0, epochs=2, batch_size=2, device="cpu", checkpoint_every=0, checkpoint_minutes=1e-9)
    train_stage1(VAE(network_preset("test")), data, cfg, tmp_path / "t")
    assert saves == [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]  # every step once the wall time is due
    saves.clear()
    cfg = TrainConfig(beta=1.0, epochs=2, batch_size=2, device="cpu", checkpoint_every=0, checkpoint_minutes=1e3)
    train_stage1(VAE(network_preset("test")), data, cfg, tmp_path / "e")
    assert saves == [(2, 0)]  # wall time not due: the final checkpoint only


def test_stale_checkpoint_temporary_of_a_killed_run_is_removed(tmp_path):
    out = tmp_path / "model"
    script = textwrap.dedent(f"""
        import os, signal
        from SkullVAELib.training import checkpoint as ckpt
        def dying_save(obj, f, *a, **k):
            open(f, "wb").close()  # the 0-byte temporary a kill -9 leaves
            os.kill(os.getpid(), signal.SIGKILL)
        ckpt.torch.save = dying_save
        ckpt.save_checkpoint(ckpt.checkpoint_path({str(out)!r}, 1), {{"epoch": 1}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    folder = out / "checkpoints"
    assert [p.name.startswith(".stage1.pt.") for p in folder.iterdir()] == [True]
    (out / ".training_log.csv.abcdefgh.tmp.csv").write_text("half")  # another of ours
    (out / "notes.tmp").write_text("not ours")
    torch.manual_seed(0)
    cfg = TrainConfig(beta=1.0, epochs=0, device="cpu")
    train_stage1(VAE(network_preset("test")), phantom_data(n=2), cfg, out)
    assert sorted(p.name for p in folder.iterdir()) == ["stage1.pt"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "notes.tmp", "training_log.csv"]
