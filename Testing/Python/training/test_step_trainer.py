"""The step-counted trainer of the learned implant sources (``training.steps``) on a toy network: a
fresh start forgets an older run's checkpoint, and an interrupted run without validation keeps the
moving average of the weights, as a run that ends normally does."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import torch

from SkullVAELib.training.steps import StepTrainer


@dataclasses.dataclass
class ToyNetwork:
    width: int = 3


@dataclasses.dataclass
class ToyTraining:
    seed: int = 0
    steps: int = 6
    seconds: float = 3600.0
    checkpoint_minutes: float = 60.0
    lr: float = 0.1
    weight_decay: float = 0.0
    val_every: int = 3
    ema: float = 0.5

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ToyTrainer(StepTrainer):
    """Fits a linear layer to a fixed target."""

    stage = 9
    checkpoint_name = "toy"

    def __init__(self, out, stop_at: int | None = None, fail_at: int | None = None) -> None:
        def progress(label, fraction, message):  # noqa: ARG001
            if self.steps_done == fail_at:
                raise RuntimeError("killed")  # a hard kill: no checkpoint
            if self.steps_done == stop_at:
                os.kill(os.getpid(), signal.SIGINT)

        net = ToyNetwork()
        super().__init__(
            lambda: torch.nn.Linear(net.width, 1), net, ToyTraining(), out, "cpu", fingerprints={}, has_validation=False
        )
        self.progress = progress
        self.x = torch.linspace(-1, 1, 12).reshape(4, 3)

    def train_step(self, batch) -> None:  # noqa: ARG002
        self.optimise(((self.model(self.x) - 1.0) ** 2).mean())


def test_a_fresh_start_removes_an_older_runs_checkpoint(tmp_path):
    ToyTrainer(tmp_path).run()
    old = tmp_path / "checkpoints" / "toy.pt"
    assert old.is_file()
    with pytest.raises(RuntimeError, match="killed"):  # killed before its first checkpoint
        ToyTrainer(tmp_path, fail_at=1).run()
    assert not old.exists()  # a --resume now refuses instead of continuing the older run


def test_an_interrupted_run_without_validation_keeps_the_moving_average(tmp_path):
    trainer = ToyTrainer(tmp_path, stop_at=4)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    raw = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.restore_best()  # what the refiner and residual workflows save after an interrupt
    average = trainer.average.weights()
    assert all(torch.equal(v, average[k]) for k, v in trainer.model.state_dict().items())
    assert not torch.equal(raw["weight"], average["weight"])
