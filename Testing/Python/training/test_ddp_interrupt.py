"""DDP on CPU: a SIGTERM that reaches one rank only stops every rank at the same step, with a checkpoint.

Two gloo processes launched the torchrun way (env vars); rank 0 signals itself after its second
step, rank 1 never gets a signal. Without the ranks agreeing, rank 0 stopped alone and rank 1
waited for it in the next gradient all-reduce (both timed out, no checkpoint). Run as a script,
this file is the worker: ``python test_ddp_interrupt.py OUT_DIR`` under RANK/WORLD_SIZE/MASTER_*.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys

import torch


def test_a_signal_on_one_rank_stops_all_ranks_with_a_checkpoint(tmp_path):
    from conftest import gloo_ranks  # in the test only: as a rank's script this file runs without pytest

    outputs = [out for _, out in gloo_ranks(__file__, str(tmp_path), timeout=120)]
    assert [o.strip().splitlines()[-1] for o in outputs] == ["rank 0: interrupted", "rank 1: interrupted"], outputs
    from SkullVAELib.training.checkpoint import load_checkpoint

    rec = load_checkpoint(tmp_path / "checkpoints" / "stage1.pt")
    assert (rec["epoch"], rec["step"]) == (0, 2)  # the step rank 0 was signalled at


def _worker(out_dir: str) -> None:
    import torch.distributed as dist

    from SkullVAELib.core.config import TrainConfig, network_preset
    from SkullVAELib.vae.networks import VAE
    from SkullVAELib.vae.stages import train_stage1

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=10))
    rank, steps = dist.get_rank(), [0]

    def progress(label, fraction, message):  # noqa: ARG001
        steps[0] += 1
        if rank == 0 and steps[0] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    data = (torch.rand(16, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1)) > 0.7).float()
    cfg = TrainConfig(stage=1, epochs=3, batch_size=4, device="cpu", precision="fp32", channels_last=False)
    torch.manual_seed(0)
    try:
        train_stage1(VAE(network_preset("test")), data, cfg, out_dir, progress=progress)
        print(f"rank {rank}: finished", flush=True)
    except KeyboardInterrupt:
        print(f"rank {rank}: interrupted", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1])
