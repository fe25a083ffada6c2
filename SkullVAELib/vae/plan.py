"""The training plan printed before training starts: stages, epochs, steps and an estimated time.

The estimate times one optimisation step of each stage on random volumes at the real grid,
batch and device (after one warm-up step), then multiplies by the steps to come. It leaves
out data loading and checkpoints, and a busy machine is slower: it is a scale, not a promise.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

STAGE_NAMES = {1: "stage 1, β-VAE", 2: "stage 2, decoupled decoder"}


@dataclass
class TrainingPlan:
    """What ``skullvae train`` is about to do.

    Attributes:
        epochs: stage (1 or 2) -> epochs to run; beta: stage-1 β.
        volumes: training volumes; batch: global batch size; grid: (X, Y, Z) voxels.
        step_seconds: stage -> measured seconds per step (empty: no estimate).
    """

    epochs: dict[int, int]
    beta: float
    volumes: int
    batch: int
    grid: tuple[int, int, int]
    device: str
    step_seconds: dict[int, float] = field(default_factory=dict)
    epochs_given: dict[int, bool] = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.volumes / max(1, self.batch)))

    def stage_seconds(self, stage: int) -> float | None:
        seconds = self.step_seconds.get(stage)
        return None if seconds is None else seconds * self.steps_per_epoch * self.epochs[stage]

    def text(self) -> str:
        """A few lines for the terminal."""
        parts = []
        for stage, epochs in self.epochs.items():
            extra = f" (β = {self.beta:g})" if stage == 1 else ""
            parts.append(f"{STAGE_NAMES[stage]}{extra}: {epochs} epochs")
        lines = [
            "plan: " + "; ".join(parts),
            f"      {self.volumes} volumes at {'×'.join(map(str, self.grid))}, batch {self.batch} "
            f"({self.steps_per_epoch} steps per epoch), device {self.device}",
        ]
        estimates = {s: self.stage_seconds(s) for s in self.epochs}
        if all(v is not None for v in estimates.values()):
            total = sum(estimates.values())
            each = ", ".join(f"stage {s} ≈ {_duration(v)}" for s, v in estimates.items())
            lines.append(
                f"      estimated time ≈ {_duration(total)} ({each}; timed on this machine now; more load, more time)"
            )
        both = 1 in self.epochs and 2 in self.epochs
        if self.epochs_given:  # the caller knows which flags were given
            trap = both and self.epochs_given.get(1) and not self.epochs_given.get(2)
        else:  # stage 2 much longer than stage 1: most likely --epochs alone was shortened
            trap = both and self.epochs[2] >= 4 * self.epochs[1]
        if trap:
            lines.append(
                f"      note: --epochs sets stage 1 only; stage 2 runs {self.epochs[2]} epochs (--epochs2, the "
                "paper's value): pass --epochs2 N to change it"
            )
        return "\n".join(lines)


def estimate_step_seconds(
    network, batch: int, device: str = "cpu", stages=(1, 2), channels_last: bool = False
) -> dict[int, float]:
    """Seconds of one training step per stage at ``network.grid``, on random volumes.

    Stage 1: VAE forward + Dice/KLD backward + Adam; stage 2: encoder without gradients,
    decoder forward + backward + Adam. The fastest of up to 3 steps after a warm-up step,
    within about 2 s per stage (1 step when one step takes longer).
    """
    import torch

    from SkullVAELib.vae.losses import soft_dice_loss, vae_loss
    from SkullVAELib.vae.networks import VAE, Decoder

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand((batch, 1, *network.grid), generator=gen) > 0.5).float().to(dev)
    vae = VAE(network).to(dev)
    if channels_last:  # the trainer's default memory layout (faster convolutions on the CPU)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        vae = vae.to(memory_format=torch.channels_last_3d)
    timings = {}

    def timed(step, budget_s: float = 2.0, max_steps: int = 4) -> float:
        """Fastest of a few steps after a warm-up (the first steps pick kernels and allocate)."""
        best, start = math.inf, time.perf_counter()
        for n in range(max_steps):
            t0 = time.perf_counter()
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if n:
                best = min(best, time.perf_counter() - t0)
            if n >= 1 and time.perf_counter() - start > budget_s:
                break
        return best

    if 1 in stages:
        opt = torch.optim.Adam(vae.parameters(), lr=1e-4)

        def step1():
            prob, mu, logvar, _ = vae(x)
            opt.zero_grad(set_to_none=True)
            vae_loss(prob, x, mu, logvar, beta=1.0)["loss"].backward()
            opt.step()

        timings[1] = timed(step1)
    if 2 in stages:
        decoder = Decoder(network).to(dev)
        if channels_last:
            decoder = decoder.to(memory_format=torch.channels_last_3d)
        opt2 = torch.optim.Adam(decoder.parameters(), lr=1e-4)

        def step2():
            with torch.no_grad():
                mu, _ = vae.encoder(x)
            opt2.zero_grad(set_to_none=True)
            soft_dice_loss(decoder(mu), x).sum().backward()
            opt2.step()

        timings[2] = timed(step2)
    if dev.type == "cuda":
        del vae, x
        torch.cuda.empty_cache()  # give the timing's memory back before the real training
    return timings


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def log_training_plan(log, stages: dict, network, volumes: int, device) -> TrainingPlan:
    """Build the plan of ``train_model`` (``stages``: {stage: TrainConfig}), time its steps, ``log`` it."""
    first = stages[min(stages)]
    plan = TrainingPlan(
        epochs={s: int(cfg.epochs) for s, cfg in sorted(stages.items())},
        beta=float(stages.get(1, first).beta),
        volumes=int(volumes),
        batch=int(first.batch_size),
        grid=tuple(network.grid),
        device=str(device),
    )
    try:
        batch = min(plan.batch, max(1, plan.volumes))
        layout = bool(getattr(first, "channels_last", False))
        plan.step_seconds = estimate_step_seconds(network, batch, device, tuple(stages), channels_last=layout)
    except Exception:  # an estimate must never stop a training (e.g. out of memory on a busy GPU)
        plan.step_seconds = {}
    from SkullVAELib.core.progress import close_all_bars

    close_all_bars()  # the plan starts on its own line
    log(plan.text())
    return plan


def grid_advice(grid, channels) -> str:
    """Which flags give a network that fits ``grid`` (for the 'cannot be divided' error)."""
    from SkullVAELib.core.config import PRESETS

    depth = min((int(g) & -int(g)).bit_length() - 1 for g in grid)  # stride-2 blocks the grid allows
    made_for = [name for name, cfg in PRESETS.items() if tuple(cfg.grid) == tuple(grid)]
    advice = []
    if made_for:
        advice.append(f"--preset {made_for[-1]} (made for {'×'.join(map(str, grid))})")
    if depth >= 1:
        fewer = ",".join(str(c) for c in list(channels)[:depth])
        advice.append(f"at most {depth} channel block{'s' if depth > 1 else ''}, e.g. --channels {fewer}")
    multiple = 2 ** len(channels)
    advice.append(f"a --grid of multiples of {multiple}")
    return "use " + ", or ".join(advice)
