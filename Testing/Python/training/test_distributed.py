"""DDP on CPU: two gloo processes launched the torchrun way (env vars) match one process.

SyncBatchNorm is GPU-only in torch, so on CPU each rank normalises over its half of the
global batch; the 1-process reference is therefore the same global batch with
``micro_batches=2`` (gradient accumulation, BN per half). Run as a script, this file is
the worker: ``python test_distributed.py OUT_JSON`` under RANK/WORLD_SIZE/MASTER_* env vars.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from SkullVAELib.core.config import TrainConfig, network_preset
from SkullVAELib.vae.networks import VAE, Decoder

NET = network_preset("test")
CFG = {"epochs": 2, "batch_size": 4, "lr": 1e-3, "beta": 1.0, "checkpoint_every": 1, "device": "cpu"}


def synthetic_data(n: int = 8) -> torch.Tensor:
    """Shells of seeded radii on the 32³ test grid, ``(n, 1, 32, 32, 32)`` float16."""
    rng = np.random.default_rng(0)
    axes = np.indices((32, 32, 32), dtype=np.float32)
    vols = []
    for _ in range(n):
        centre = 16 + rng.uniform(-2, 2, size=(3, 1, 1, 1))
        radius = rng.uniform(7, 12)
        dist = np.sqrt(((axes - centre) ** 2).sum(0))
        vols.append(((dist < radius) & (dist > radius - 3)).astype(np.float32))
    return torch.from_numpy(np.stack(vols))[:, None].to(torch.float16)


def train_both_stages(out_dir: Path, micro_batches: int = 1) -> dict:
    """Stage 1 (2 epochs) then stage 2 (2 epochs) with fixed inits; losses and sums of the trained parameters."""
    from SkullVAELib.vae.stages import train_stage1, train_stage2

    data = synthetic_data()
    torch.manual_seed(0)
    vae = VAE(NET)
    h1 = train_stage1(vae, data, TrainConfig(**CFG), out_dir, micro_batches=micro_batches)
    # Stage 2 starts from a fixed encoder: BatchNorm running statistics (used by the frozen encoder
    # in eval mode) legitimately differ - DDP keeps rank 0's, accumulation updates them per micro-batch.
    torch.manual_seed(1)
    encoder, dec = VAE(NET).encoder, Decoder(NET)
    h2 = train_stage2(encoder, dec, data, TrainConfig(stage=2, **CFG), out_dir, micro_batches=micro_batches)
    weights = [float(p.detach().double().sum()) for p in [*vae.parameters(), *dec.parameters()]]
    return {"stage1": [[r["dice"], r["kld"]] for r in h1], "stage2": [r["dice"] for r in h2], "weights": weights}


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    from conftest import gloo_ranks  # in the test only: as a rank's script this file runs without pytest

    ranks = gloo_ranks(__file__, str(tmp_path / "rank{rank}.json"), str(tmp_path / "ddp"), timeout=240)
    assert [code for code, _ in ranks] == [0, 0], ranks
    ddp = json.loads((tmp_path / "rank0.json").read_text())
    ddp_rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert ddp["weights"] == ddp_rank1["weights"]  # DDP keeps the replicas identical

    single = train_both_stages(tmp_path / "single", micro_batches=2)
    np.testing.assert_allclose(ddp["stage1"], single["stage1"], rtol=1e-4)
    np.testing.assert_allclose(ddp["stage2"], single["stage2"], rtol=1e-4)
    np.testing.assert_allclose(ddp["weights"], single["weights"], rtol=1e-3, atol=1e-4)
    # Rank 0 alone wrote the log and the checkpoints.
    assert (tmp_path / "ddp" / "checkpoints" / "stage2.pt").is_file()
    assert len((tmp_path / "ddp" / "training_log.csv").read_text().splitlines()) == 1 + 4


def _worker(out_json: str, out_dir: str) -> None:
    from SkullVAELib.training.distributed import init_distributed, shutdown_distributed

    torch.set_num_threads(1)
    created = init_distributed("cpu")
    try:
        result = train_both_stages(Path(out_dir))
        Path(out_json).write_text(json.dumps(result))
        # as workflows.train does: no rank tears its gloo connections down while a peer still
        # uses them (without this wait a rank was once aborted at exit, "terminate called ...")
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
    finally:
        shutdown_distributed(created)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
