"""One training step of the paper network at 256×256×128 (batch 4), fp32 vs bf16 autocast on the CPU.

Same model, channels-last, interleaved runs; prints seconds per step. Training takes bf16 with
`skullvae train --precision bf16` (`TrainConfig(precision="bf16")`), and by default (`auto`) on
CPUs that compute it natively (AVX-512-BF16 / AMX), where it pays off.

    .venv/bin/python benchmarks/cpu_bf16_step.py --threads 2 --steps 3
"""

from __future__ import annotations

import argparse
import time

import torch

from SkullVAELib.core.config import network_preset
from SkullVAELib.vae.losses import vae_loss
from SkullVAELib.vae.networks import VAE


def step_times(bf16: bool, steps: int, preset: str) -> list[float]:
    cfg = network_preset(preset)
    torch.manual_seed(0)
    x = (torch.rand(4, 1, *cfg.grid) > 0.7).float().contiguous(memory_format=torch.channels_last_3d)
    vae = VAE(cfg).to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(vae.parameters(), 1e-4)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            prob, mu, logvar, _ = vae(x)
        loss = vae_loss(prob.float(), x, mu.float(), logvar.float(), 100.0)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--preset", default="paper")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for bf16 in (False, True, False, True):
        times = step_times(bf16, args.steps, args.preset)
        print(f"{'bf16' if bf16 else 'fp32'}: steps {[round(t, 2) for t in times]} s, steady {min(times[1:]):.2f} s")


if __name__ == "__main__":
    main()
