"""The learned refiner trains on the VAE's training loop (issue 22 item 5, issue 25 §7): the same
hooks, log, checkpoints, exact resume, time budget and signal behaviour (SIGTERM: the best weights
so far, marked interrupted, and exit 130), on tiny phantom grids."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.implant.learned.config import RefinerConfig, load_refiner, save_refiner
from SkullVAELib.implant.learned.data import load_lps_grids
from SkullVAELib.implant.learned.train import RefinerTrainConfig, RefinerTrainer, to_device
from SkullVAELib.io.image import write_mask
from SkullVAELib.training import checkpoint as ckpt
from SkullVAELib.training.log import read_log
from SkullVAELib.training.loop import Trainer
from SkullVAELib.workflows.refiner import pack_refiner_grids, train_refiner

SHAPE, SPACING = (64, 64, 48), (3.2, 3.2, 3.2)
TINY = RefinerConfig(spacing_mm=4.0, crop_shape=(32, 32, 32), channels=(4, 8, 16), crop_offset_mm=(-64, -32, -8))
TINY_FLAGS = ["--spacing", "4", "--crop", "32,32,32", "--channels", "4,8,16"]


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    """Phantoms 001-003 packed on 4 mm refiner grids."""
    root = tmp_path_factory.mktemp("refiner_loop")
    for seed in (1, 2, 3):
        write_mask(make_phantom(seed, SHAPE, SPACING), root / "data" / "complete_skull" / f"{seed:03d}.nrrd")
    return pack_refiner_grids(root / "data", root / "grids.npz", spacing_mm=4.0)


def weights(path) -> dict[str, torch.Tensor]:
    return load_refiner(path)[0].state_dict()


def train_until_interrupted(grids, out, settings: RefinerTrainConfig, steps: int):
    """Train on phantoms 001-002 (validation 003) until Ctrl-C comes after ``steps`` steps; the
    path of the checkpoint it left."""
    seen = []

    def interrupt(label, fraction, message):
        seen.append(message)
        if len(seen) == steps:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_refiner(grids, out, ["001", "002"], ["003"], TINY, settings, progress=interrupt)
    return out / "checkpoints" / "refiner.pt"


def test_the_refiner_runs_the_loops_hooks_in_order(grids, tmp_path):
    events = []

    class Spy(RefinerTrainer):
        def on_train_start(self):
            events.append("start")

        def on_epoch_start(self, epoch):
            events.append(f"epoch {epoch}")

        def on_validation(self, row):
            events.append(f"validation {row['step']}")

        def on_epoch_end(self, row):
            events.append(f"end {row['epoch']}")

        def on_train_end(self):
            events.append("finish")
            super().on_train_end()

    skulls = to_device(load_lps_grids(grids)[0], 4.0, "cpu")
    trainer = Spy(
        TINY, RefinerTrainConfig(steps=3, val_every=2), {"001": skulls["001"]}, {"002": skulls["002"]}, tmp_path
    )
    assert isinstance(trainer, Trainer)
    rows = trainer.run()
    assert events == ["start", "epoch 0", "validation 2", "end 1", "epoch 1", "validation 3", "end 2", "finish"]
    assert [r["step"] for r in rows] == [2, 3] and all(0 <= r["val_dice"] <= 1 for r in rows)
    assert (tmp_path / "checkpoints" / "refiner.pt").is_file()


def test_ctrl_c_keeps_the_best_weights_marked_interrupted_and_resume_continues_exactly(grids, tmp_path):
    settings = RefinerTrainConfig(steps=6, val_every=2)
    full = train_refiner(grids, tmp_path / "full", ["001", "002"], ["003"], TINY, settings)
    out = tmp_path / "int"
    train_until_interrupted(grids, out, settings, 3)  # mid-round: round 2, step 1
    info = load_refiner(out / "refiner.safetensors")[2]
    assert info["interrupted"] is True and info["steps"] == 3 and info["best_step"] == 2
    saved = ckpt.load_checkpoint(out / "checkpoints" / "refiner.pt")
    assert (saved["epoch"], saved["step"], saved["steps_done"]) == (1, 1, 3)
    with pytest.raises(SkullVAEError, match="--overwrite"):  # neither finished nor resumed: refused
        train_refiner(grids, out, ["001", "002"], ["003"], TINY, settings)
    with pytest.raises(SkullVAEError, match="batch=2, not 3"):
        train_refiner(
            grids, out, ["001", "002"], ["003"], TINY, RefinerTrainConfig(steps=6, val_every=2, batch=3), resume=True
        )
    resumed = train_refiner(grids, out, ["001", "002"], ["003"], TINY, settings, resume=True)
    assert "interrupted" not in load_refiner(resumed)[2]
    rows, rows_full = read_log(out / "training_log.csv"), read_log(full.parent / "training_log.csv")
    assert [(r["step"], r["loss"], r["val_dice"]) for r in rows] == [
        (r["step"], r["loss"], r["val_dice"]) for r in rows_full
    ]
    for key, value in weights(full).items():
        assert torch.equal(weights(resumed)[key], value), key


def test_the_time_budget_closes_the_round_early(grids, tmp_path):
    path = train_refiner(
        grids, tmp_path / "t", ["001"], ["002"], TINY, RefinerTrainConfig(steps=100, val_every=50, seconds=1e-9)
    )
    rows = read_log(tmp_path / "t" / "training_log.csv")
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 1)] and "val_dice" in rows[0]
    assert load_refiner(path)[2]["steps"] == 1


def test_sigterm_saves_the_best_weights_marked_interrupted_and_exits_130(grids, tmp_path):
    """Issue 25 §7: train-refiner used to exit 0 and write half-trained weights as if finished."""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "SkullVAELib", "train-refiner", "--grids", str(grids), "--out", str(out)]
    argv += ["--train-ids", "001-002", "--val-ids", "003", *TINY_FLAGS, "--val-every", "2", "--progress", "json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*argv, "--steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    for line in proc.stdout:  # under --progress json, stdout holds only JSON objects
        if json.loads(line)["message"].startswith("step 3/"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    info = load_refiner(out / "refiner.safetensors")[2]
    assert info["interrupted"] is True and info["steps"] >= 3 and info["best_step"] >= 2
    done = ckpt.load_checkpoint(out / "checkpoints" / "refiner.pt")["steps_done"]
    assert done == info["steps"]
    resumed = subprocess.run([*argv, "--steps", str(done + 1), "--resume"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    info = load_refiner(out / "refiner.safetensors")[2]
    assert "interrupted" not in info and info["steps"] == done + 1


def test_a_checkpoint_from_before_a_new_setting_resumes_and_a_changed_one_is_refused(grids, tmp_path):
    """A network setting added since the checkpoint (here test_time_mirror) counts at its default."""
    import dataclasses

    settings = RefinerTrainConfig(steps=4, val_every=2)

    out = tmp_path / "old"
    path = train_until_interrupted(grids, out, settings, 2)
    saved = ckpt.load_checkpoint(path)
    del saved["config"]["network"]["test_time_mirror"]  # as an older version wrote it
    ckpt.save_checkpoint(path, saved)
    with pytest.raises(SkullVAEError, match="network="):
        train_refiner(
            grids, out, ["001", "002"], ["003"], dataclasses.replace(TINY, channels=(4, 16)), settings, resume=True
        )
    assert (
        load_refiner(train_refiner(grids, out, ["001", "002"], ["003"], TINY, settings, resume=True))[2]["steps"] == 4
    )


@pytest.mark.parametrize(("precision", "bf16"), [("fp32", False), ("bf16", True)])
def test_the_precision_setting_chooses_the_loops_autocast(grids, tmp_path, precision, bf16):
    """``precision`` (auto / bf16 / fp32): bfloat16 autocast on the loop or none, either way a trained
    refiner; on a CPU the network is held in the channels-last 3D layout; an unknown value is refused."""
    skulls = to_device(load_lps_grids(grids)[0], 4.0, "cpu")
    settings = RefinerTrainConfig(steps=2, val_every=2, precision=precision)
    trainer = RefinerTrainer(TINY, settings, {"001": skulls["001"]}, {"002": skulls["002"]}, tmp_path)
    with trainer.autocast():
        assert torch.is_autocast_enabled("cpu") is bf16
    conv = next(p for p in trainer.model.parameters() if p.dim() == 5 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d)
    rows = trainer.run()
    assert rows and 0.0 <= rows[-1]["val_dice"] <= 1.0
    save_refiner(tmp_path / "r.safetensors", trainer.model, TINY)  # channels-last weights saved as plain tensors
    loaded = load_refiner(tmp_path / "r.safetensors")[0].state_dict()
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(loaded[name].float(), value.float(), atol=1e-2, rtol=1e-2)  # float16 file
    with pytest.raises(SkullVAEError, match="precision must be one of auto, bf16, fp32"):
        RefinerTrainConfig(precision="fp16")


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_lr_schedule_holds_or_anneals_the_learning_rate_over_the_steps(grids, tmp_path, schedule):
    rates = []

    class Spy(RefinerTrainer):
        def optimise(self, loss):
            super().optimise(loss)
            rates.append(self.optimizer.param_groups[0]["lr"])

    skulls = to_device(load_lps_grids(grids)[0], 4.0, "cpu")
    settings = RefinerTrainConfig(steps=4, val_every=2, lr=1e-3, lr_schedule=schedule)
    Spy(TINY, settings, {"001": skulls["001"]}, {"002": skulls["002"]}, tmp_path).run()
    cosine = [1e-3 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]  # 1e-3, 8.5e-4, 5e-4, 1.5e-4
    assert rates == pytest.approx(cosine if schedule == "cosine" else [1e-3] * 4)
    with pytest.raises(SkullVAEError, match="lr_schedule must be one of constant, cosine"):
        RefinerTrainConfig(lr_schedule="linear")


def test_a_cosine_anneals_by_the_clock_and_a_resume_continues_the_decay(grids, tmp_path):
    """Under a wall-time budget the share spent is the clock's; a resume starts from the share the
    interrupted run had spent (kept in the checkpoint), and a checkpoint from before the setting
    existed held its learning rate."""
    skulls = to_device(load_lps_grids(grids)[0], 4.0, "cpu")
    timed = RefinerTrainConfig(steps=1000, seconds=120.0, lr_schedule="cosine")
    trainer = RefinerTrainer(TINY, timed, {"001": skulls["001"]}, {}, tmp_path / "clock")
    trainer.started, trainer.fraction_before = time.monotonic() - 30.0, 0.5
    assert trainer.budget_fraction() == pytest.approx(0.5 + 0.5 * 30.0 / 120.0, abs=0.01)

    settings = RefinerTrainConfig(steps=6, val_every=2, lr_schedule="cosine")
    full = train_refiner(grids, tmp_path / "full", ["001", "002"], ["003"], TINY, settings)

    out = tmp_path / "int"
    path = train_until_interrupted(grids, out, settings, 3)
    saved = ckpt.load_checkpoint(path)
    assert saved["optimizer"]["param_groups"][0]["budget_fraction"] == pytest.approx(2 / 6)
    resumed = train_refiner(grids, out, ["001", "002"], ["003"], TINY, settings, resume=True)
    for key, value in weights(full).items():
        assert torch.equal(weights(resumed)[key], value), key

    del saved["config"]["lr_schedule"]  # as a version before the setting wrote it
    ckpt.save_checkpoint(path, saved)
    with pytest.raises(SkullVAEError, match="lr_schedule=constant, not cosine"):
        train_refiner(grids, out, ["001", "002"], ["003"], TINY, settings, resume=True)


class AverageSpy(RefinerTrainer):
    """Records, at every validation, the weights it scored, the network's own and the average's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def validation_dice(self) -> float:
        scored = next(iter(self.model.state_dict().values())).clone()
        self.seen.append((scored, next(iter(self.average.weights().values())).clone()))
        return float(len(self.seen))  # every validation is the best so far


def test_a_weight_average_is_what_validation_scores_and_the_kept_weights_are(grids, tmp_path):
    skulls = to_device(load_lps_grids(grids)[0], 4.0, "cpu")
    settings = RefinerTrainConfig(steps=4, val_every=2, lr=1e-2, ema=0.5)
    trainer = AverageSpy(TINY, settings, {"001": skulls["001"]}, {"002": skulls["002"]}, tmp_path / "val")
    trainer.run()
    own = next(iter(trainer.model.state_dict().values()))
    assert len(trainer.seen) == 2 and all(torch.equal(scored, avg) for scored, avg in trainer.seen)
    assert torch.equal(own, trainer.seen[-1][1])  # the best kept is the average of step 4
    saved = ckpt.load_checkpoint(tmp_path / "val" / "checkpoints" / "refiner.pt")
    assert not torch.equal(next(iter(saved["model"].values())), own)  # the network trained on its own weights
    assert int(saved["ema"]["n_averaged"]) == 4

    alone = RefinerTrainer(TINY, settings, {"001": skulls["001"]}, {}, tmp_path / "alone")
    alone.run()  # no validation: the run ends on the average
    for name, value in alone.average.weights().items():
        assert torch.equal(alone.model.state_dict()[name], value), name


def test_a_weight_average_resumes_exactly_and_a_changed_decay_is_refused(grids, tmp_path):
    settings = RefinerTrainConfig(steps=6, val_every=2, ema=0.8)
    full = train_refiner(grids, tmp_path / "full", ["001", "002"], ["003"], TINY, settings)
    out = tmp_path / "int"
    path = train_until_interrupted(grids, out, settings, 3)
    assert int(ckpt.load_checkpoint(path)["ema"]["n_averaged"]) == 3
    with pytest.raises(SkullVAEError, match="ema=0.8, not 0.9"):
        train_refiner(
            grids, out, ["001", "002"], ["003"], TINY, RefinerTrainConfig(steps=6, val_every=2, ema=0.9), resume=True
        )
    resumed = train_refiner(grids, out, ["001", "002"], ["003"], TINY, settings, resume=True)
    assert load_refiner(resumed)[2]["train"]["ema"] == 0.8
    for key, value in weights(full).items():
        assert torch.equal(weights(resumed)[key], value), key


def test_the_weight_decay_setting_reaches_adamw_and_a_bad_one_is_refused(grids, tmp_path):
    skulls = to_device(load_lps_grids(grids)[0], 4.0, "cpu")
    settings = RefinerTrainConfig(steps=1, val_every=1, weight_decay=0.05)
    trainer = RefinerTrainer(TINY, settings, {"001": skulls["001"]}, {}, tmp_path)
    assert [group["weight_decay"] for group in trainer.optimizer.param_groups] == [0.05]
    for bad in (-1e-3, math.inf, math.nan):
        with pytest.raises(SkullVAEError, match="weight_decay must be a finite number >= 0"):
            RefinerTrainConfig(weight_decay=bad)
