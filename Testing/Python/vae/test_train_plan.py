"""`skullvae train` states its plan: stages, epochs, steps, an estimated time, and the --epochs2 trap."""

from __future__ import annotations

from SkullVAELib.core.config import network_preset
from SkullVAELib.vae.plan import TrainingPlan, estimate_step_seconds


def test_plan_names_stages_epochs_and_the_epochs2_default():
    plan = TrainingPlan({1: 2, 2: 1200}, 100.0, 33, 4, (64, 64, 32), "cpu", {1: 0.1, 2: 0.05}, {1: True, 2: False})
    text = plan.text()
    assert "stage 1, β-VAE (β = 100): 2 epochs" in text and "stage 2, decoupled decoder: 1200 epochs" in text
    assert "9 steps per epoch" in text
    assert "estimated time ≈ 9 min" in text  # 9 steps × (2 × 0.1 + 1200 × 0.05) s = 542 s
    assert "--epochs2" in text


def test_no_note_when_both_epochs_are_given_and_no_estimate_without_timings():
    text = TrainingPlan({1: 2, 2: 3}, 1e-4, 8, 4, (32, 32, 32), "cpu", {}, {1: True, 2: True}).text()
    assert "--epochs2" not in text and "estimated" not in text


def test_step_timing_is_measured_for_both_stages():
    seconds = estimate_step_seconds(network_preset("test"), batch=2)
    assert set(seconds) == {1, 2} and all(0 < s < 60 for s in seconds.values())


def test_grid_advice_names_the_flags():
    from SkullVAELib.vae.plan import grid_advice

    text = grid_advice((32, 32, 32), (32, 64, 64, 128, 128, 256))
    assert "--preset test" in text and "--channels 32,64,64,128,128" in text


def test_log_training_plan_logs_the_plan():
    from SkullVAELib.core.config import TrainConfig
    from SkullVAELib.vae.plan import log_training_plan

    lines = []
    stages = {1: TrainConfig(stage=1, epochs=2), 2: TrainConfig(stage=2, epochs=3)}
    plan = log_training_plan(lines.append, stages, network_preset("test"), volumes=6, device="cpu")
    assert plan.epochs == {1: 2, 2: 3} and "estimated time" in lines[0]
