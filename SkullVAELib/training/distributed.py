"""DistributedDataParallel plumbing (torchrun, NCCL on CUDA, gloo on CPU).

Sharding convention (documented in the trainer): ``TrainConfig.batch_size`` is the GLOBAL
batch. Every rank draws the same seeded permutation of the in-memory data set, cuts it
into global batches and takes its contiguous share of each batch
(``torch.tensor_split(batch, world)[rank]``) - a DistributedSampler for a tensor that
already sits in memory, but with the global batch kept identical to a 1-process run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from SkullVAELib.core.devices import resolve_device

__all__ = [
    "DistContext",
    "current_context",
    "init_distributed",
    "launched_by_torchrun",
    "resolve_device",
    "shutdown_distributed",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of one global batch of indices."""
        if not self.distributed:
            return indices
        return torch.tensor_split(indices, self.world_size)[self.rank]

    def any_rank(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, true when it is true on any rank (one all-reduce under DDP): a decision every rank
        must take at the same step (stop on a signal, stop on time, checkpoint) is taken by all."""
        if not self.distributed:
            return tuple(bool(f) for f in flags)
        votes = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in votes.tolist())


def launched_by_torchrun() -> bool:
    """True when torchrun (or any env:// launcher) set WORLD_SIZE > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str = "auto") -> bool:
    """Join the process group announced by torchrun's env vars; returns True if this call created it.

    NCCL when the device is CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on CPU.
    """
    if dist.is_initialized() or not launched_by_torchrun():
        return False
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    return True


def current_context(device: str = "auto") -> DistContext:
    """The context of this process: the initialised process group if any, else a single process."""
    dev = resolve_device(device)
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext(0, 1, dev)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return DistContext(dist.get_rank(), dist.get_world_size(), dev)


def shutdown_distributed(created: bool) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if created and dist.is_initialized():
        dist.destroy_process_group()
