"""DDP on CPU: a run interrupted mid-epoch and resumed gives every rank its OWN random state back.

Two gloo processes launched the torchrun way (env vars) train stage 1 three times in one process
group: uninterrupted ("full"), interrupted by a SIGTERM on rank 0 after step 2 of epoch 1
("interrupted") and resumed from that checkpoint ("resumed"). Each rank seeds its global RNGs
(torch, NumPy, Python) with its own seed, and the augmentation draws from them and from the
rank's ``augment`` generator. The draws before plus after the resume must be the uninterrupted
run's, on each rank. The checkpoint used to keep rank 0's states only, so after a resume rank 1
drew rank 0's augmentations. Run as a script, this file is the worker:
``python test_ddp_resume_rng.py OUT_DIR`` under RANK/WORLD_SIZE/MASTER_* env vars.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EPOCHS, BATCH = 2, 4  # 16 volumes: 4 global batches (2 volumes per rank) per epoch


def _data() -> torch.Tensor:
    """``(16, 1, 32, 32, 32)`` float32 random occupancy, the same in every process."""
    return (torch.rand(16, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1)) > 0.7).float()


def _cfg(epochs: int = EPOCHS):
    from SkullVAELib.core.config import TrainConfig

    return TrainConfig(
        stage=1, epochs=epochs, batch_size=BATCH, device="cpu", precision="fp32", channels_last=False, lr=1e-3
    )


def _launch(out_dir: Path) -> list[str]:
    from conftest import gloo_ranks  # in the test only: as a rank's script this file runs without pytest

    ranks = gloo_ranks(__file__, str(out_dir), timeout=180)
    assert [code for code, _ in ranks] == [0, 0], ranks
    return [out for _, out in ranks]


def test_each_rank_resumes_its_own_random_state(tmp_path):
    from SkullVAELib.core.config import network_preset
    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.training.checkpoint import load_checkpoint
    from SkullVAELib.vae.networks import VAE
    from SkullVAELib.vae.stages import train_stage1

    _launch(tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, got in enumerate(ranks):
        assert len(got["interrupted"]) == 2 and len(got["full"]) == 2 * EPOCHS * 2  # 2 steps, then the rest
        assert got["interrupted"] + got["resumed"] == got["full"], f"rank {r} did not continue its own draws"
    assert ranks[0]["full"][2] != ranks[1]["full"][2]  # the ranks draw different augmentations
    assert ranks[0]["resumed_loss"] == ranks[0]["full_loss"]  # and the run continues exactly
    rec = load_checkpoint(tmp_path / "midepoch.pt")  # torch.load(weights_only=True)
    assert (rec["epoch"], rec["step"], rec["world_size"], len(rec["rank_rng"])) == (0, 2, 2, 2)

    # On one process: the 2-rank mid-epoch checkpoint is refused (one line) ...
    single = tmp_path / "single" / "checkpoints"
    single.mkdir(parents=True)
    shutil.copy(tmp_path / "midepoch.pt", single / "stage1.pt")
    with pytest.raises(SkullVAEError, match="mid-epoch by 2 process") as info:
        train_stage1(VAE(network_preset("test")), _data(), _cfg(), single.parent, resume=True)
    assert "\n" not in str(info.value)
    # ... and its epoch-boundary checkpoint (the end of the run) goes on for another epoch.
    shutil.copy(tmp_path / "part" / "checkpoints" / "stage1.pt", single / "stage1.pt")
    rows = train_stage1(VAE(network_preset("test")), _data(), _cfg(EPOCHS + 1), single.parent, resume=True)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 2))


def test_a_checkpoint_that_does_not_record_its_process_count_is_not_said_to_be_one_processs(tmp_path):
    """A checkpoint from before ``world_size`` and ``rank_rng`` were written holds rank 0's random state
    alone, whatever the number of processes. Mid-epoch on 2 ranks it was refused as "saved by 1
    process(es) ... resume it with 1": wrong advice for a DDP run's. It now says the count is not
    recorded; a count the per-rank list shows is taken from it."""
    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.training.checkpoint import capture_rng_state, restore_random_state
    from SkullVAELib.training.distributed import DistContext

    path = tmp_path / "checkpoints" / "stage1.pt"
    state = {"rng": capture_rng_state(), "generators": {"noise": torch.Generator().get_state()}}
    old = {"step": 2, "rng": state["rng"], "noise_state": state["generators"]["noise"]}  # no world_size
    with pytest.raises(SkullVAEError) as info:
        restore_random_state(old, DistContext(0, 2), path)
    message = str(info.value)
    assert "does not record how many processes wrote it" in message and "by 1 process" not in message
    assert "epoch boundary" in message and str(path) in message and "\n" not in message
    assert set(restore_random_state(old, DistContext(0, 1), path)) == {"noise"}  # taken as one process's
    assert restore_random_state({**old, "step": 0}, DistContext(1, 2), path) == {}  # an epoch boundary goes on
    ranks = {"step": 2, "rng": state["rng"], "rank_rng": [state, state]}  # the per-rank list shows 2
    with pytest.raises(SkullVAEError, match=r"mid-epoch by 2 process\(es\), not 1; resume it with 2"):
        restore_random_state(ranks, DistContext(0, 1), path)
    assert set(restore_random_state(ranks, DistContext(1, 2), path)) == {"noise"}
    from SkullVAELib.training.checkpoint import saved_world_size

    assert (saved_world_size(old), saved_world_size(ranks), saved_world_size({**old, "world_size": 3})) == (None, 2, 3)


def _seed_globals(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _worker(out_dir: str) -> None:
    """Full, interrupted and resumed runs on this rank; writes ``OUT_DIR/rank{R}.json`` (the draws)."""
    import torch.distributed as dist

    from SkullVAELib.core.config import network_preset
    from SkullVAELib.vae.networks import VAE
    from SkullVAELib.vae.stages import train_stage1

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, out = dist.get_rank(), Path(out_dir)
    draws: dict[str, list] = {"full": [], "interrupted": [], "resumed": []}
    phase, steps = ["full"], [0]

    def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        scale = 0.8 + 0.2 * torch.rand(len(x), generator=gen, device=x.device)
        draws[phase[0]].append([*scale.tolist(), torch.rand(()).item(), float(np.random.rand()), random.random()])
        return x * scale.view(-1, 1, 1, 1, 1)

    def progress(label, fraction, message):  # noqa: ARG001
        steps[0] += 1
        if phase[0] == "interrupted" and rank == 0 and steps[0] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # rank 0 only; the ranks agree to stop after this step

    def run(name: str, folder: str, seed: int, resume: bool = False) -> list[dict]:
        phase[0], steps[0] = name, 0
        torch.manual_seed(0)
        vae = VAE(network_preset("test"))
        _seed_globals(seed)  # after the model: the global RNGs the augmentation draws from
        return train_stage1(vae, _data(), _cfg(), out / folder, resume, progress, batch_transform=augment)

    try:
        full = run("full", "full", 100 + rank)
        try:
            run("interrupted", "part", 100 + rank)
        except KeyboardInterrupt:
            pass
        if rank == 0:
            shutil.copy(out / "part" / "checkpoints" / "stage1.pt", out / "midepoch.pt")
        dist.barrier()
        resumed = run("resumed", "part", 7, resume=True)  # a fresh seed: the checkpoint must override it
        result = {**draws, "full_loss": [r["loss"] for r in full], "resumed_loss": [r["loss"] for r in resumed]}
        (out / f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1])
