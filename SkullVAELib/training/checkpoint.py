"""Resumable training state: atomic save, safe load, RNG state capture.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts written with
``torch.save`` through :func:`SkullVAELib.core.atomic.atomic_path` (temp file + rename, so a kill
mid-write leaves the previous checkpoint intact) and read back with
``torch.load(weights_only=True)`` (nothing is unpickled). RNG states of Python, NumPy and
torch are converted to tensors/ints so that the safe loader accepts them.

Under DDP every rank has its own random state (its augmentation stream, and whatever global RNG
state it drew or was seeded with): :func:`gather_random_states` collects them all on rank 0, the
checkpoint keeps them as a list by rank (``rank_rng``) and :func:`restore_random_state` gives each
rank its own entry back.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from SkullVAELib.core import atomic
from SkullVAELib.core.atomic import atomic_path
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.training.distributed import DistContext

CHECKPOINT_FORMAT = "skullvae-checkpoint"
CHECKPOINT_VERSION = 1


def checkpoint_path(out_dir: str | os.PathLike, stage: int | str) -> Path:
    """``out_dir/checkpoints/stage{1,2}.pt`` for a VAE stage, ``out_dir/checkpoints/NAME.pt`` for a named trainer."""
    return Path(out_dir) / "checkpoints" / (f"stage{stage}.pt" if isinstance(stage, int) else f"{stage}.pt")


def check_run_folder(out_dir: str | os.PathLike, weights_file: str, name: str, overwrite: bool, resume: bool) -> None:
    """Refuse (one line) to replace ``out_dir/weights_file`` without ``overwrite`` or ``resume``, and
    a ``resume`` without the checkpoint of the trainer ``name``."""
    from SkullVAELib.core.errors import SkullVAEError

    if (Path(out_dir) / weights_file).exists() and not (overwrite or resume):
        raise SkullVAEError(f"{weights_file} exists; pass --overwrite to replace it (or --resume)", out_dir)
    if resume and not checkpoint_path(out_dir, name).is_file():
        raise SkullVAEError("--resume: no checkpoint to resume from", checkpoint_path(out_dir, name))


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete an older run's checkpoint ``path`` (if any) at a fresh start, so that a ``--resume``
    after a kill before this run's first checkpoint cannot continue the older run."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as exc:
        raise SkullVAEError(f"cannot remove an older training's checkpoint: {exc.strerror}", path) from None


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (plain tensors/containers only) atomically to ``path``."""
    record = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    with atomic_path(path) as tmp:
        try:
            torch.save(record, tmp)
        except RuntimeError as exc:  # torch's C++ writer: a full disk or a file-size limit (ulimit -f)
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise SkullVAEError(
                f"cannot write the checkpoint: the disk is full or a file-size limit was reached ({lines[-1][:120] if lines else 'write failed'})",
                path,
            ) from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; one-line :class:`SkullVAEError` if missing/corrupt/foreign."""
    path = Path(path)
    if not path.is_file():
        raise SkullVAEError("no checkpoint to resume from (train without --resume first)", path)
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, ...: all user-fixable
        raise SkullVAEError(f"not a readable checkpoint ({type(exc).__name__})", path) from None
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        raise SkullVAEError("not a SkullVAE training checkpoint", path)
    if record.get("version") != CHECKPOINT_VERSION:
        raise SkullVAEError(f"checkpoint version {record.get('version')} is not supported", path)
    return record


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states of Python, NumPy and torch (CPU and every CUDA device) as safe-loadable values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state(
        (nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_random_states(ctx: DistContext, generators: dict[str, torch.Generator]) -> list[dict[str, Any]] | None:
    """Every rank's random state, a list by rank on rank 0 (``None`` on the others); all ranks call it.

    An entry is ``{"rng": capture_rng_state(), "generators": {name: state}}`` (``state``: the uint8
    CPU tensor of ``Generator.get_state()``; pass ``{}`` at an epoch boundary, where the epoch's
    generators are seeded afresh). The objects travel pickled between the ranks only, in memory.
    """
    local = {"rng": capture_rng_state(), "generators": {name: g.get_state() for name, g in generators.items()}}
    if not ctx.distributed:
        return [local]
    states: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(local, states, dst=0)
    return states


def random_state_record(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint's entries for ``states`` (:func:`gather_random_states`): rank 0's at the top level
    (``rng``, ``NAME_state``: a single process's checkpoint, as before), ``world_size``, and under DDP
    every rank's in ``rank_rng`` (a list by rank)."""
    record: dict[str, Any] = {"rng": states[0]["rng"], "world_size": len(states)}
    record.update({f"{name}_state": state for name, state in states[0]["generators"].items()})
    if len(states) > 1:
        record["rank_rng"] = states
    return record


def saved_world_size(rec: dict[str, Any]) -> int | None:
    """How many processes wrote the checkpoint ``rec``: its ``world_size``, else the length of its
    per-rank ``rank_rng``; None when it records neither. Checkpoints from before both were written
    hold rank 0's random state alone, whatever the number of processes; nothing else in them
    (settings, accumulated sums, history) tells that number."""
    if "world_size" in rec:
        return int(rec["world_size"])
    ranks = rec.get("rank_rng")
    return len(ranks) if isinstance(ranks, list) and ranks else None


def restore_random_state(rec: dict[str, Any], ctx: DistContext, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Restore this rank's global RNG states from the checkpoint ``rec``; return its saved epoch
    generators' states by name (empty at an epoch boundary).

    On another number of processes than wrote ``rec``: at an epoch boundary (``rec["step"] == 0``) the
    resume goes on, as PyTorch users resume elastic (torchrun) runs on other GPU counts - the epoch's
    generators are seeded afresh per (seed, stage, epoch, rank) anyway, ranks the checkpoint has take
    their own global RNG states and the others keep theirs. Mid-epoch it is refused (one line): the
    epoch's batches were shared out and its per-rank streams drawn for the old count, so no state
    of the new ranks continues the run, and handing one rank's streams to several would make them
    draw the same augmentations. A checkpoint that does not record its number of processes
    (:func:`saved_world_size`) is taken as one process's, and refused mid-epoch on several with
    that said: it may have been written by any number.
    """
    recorded = saved_world_size(rec)
    saved_world = 1 if recorded is None else recorded
    if saved_world != ctx.world_size and rec["step"] > 0:
        if recorded is None:
            raise SkullVAEError(
                "this checkpoint was saved mid-epoch and does not record how many processes wrote it (it predates "
                f"that record), so it cannot be resumed on {ctx.world_size} processes: if the run was started as one "
                "process, resume it with 1; else resume from a checkpoint saved at an epoch boundary",
                path,
            )
        raise SkullVAEError(
            f"this checkpoint was saved mid-epoch by {saved_world} process(es), not {ctx.world_size}; "
            f"resume it with {saved_world}",
            path,
        )
    generators = {k[: -len("_state")]: v for k, v in rec.items() if k.endswith("_state")}
    entries = rec.get("rank_rng") or [{"rng": rec["rng"], "generators": generators}]
    if ctx.rank >= len(entries):
        return {}
    restore_rng_state(entries[ctx.rank]["rng"])
    return dict(entries[ctx.rank]["generators"]) if saved_world == ctx.world_size else {}


def data_fingerprint(data: torch.Tensor) -> dict[str, Any]:
    """Shape and a cheap checksum of the training tensor, to refuse resuming on different data."""
    return {"shape": list(data.shape), "sum": float(data.float().sum().item())}


def check_fingerprint(
    saved: dict[str, Any], data: torch.Tensor, path: str | os.PathLike, rtol: float = 1e-6, what: str = "data"
) -> None:
    """Raise a one-line error if ``data`` is not the tensor the checkpoint was trained on."""
    now = data_fingerprint(data)
    scale = max(1.0, abs(now["sum"]), float(data.float().abs().sum().item()))
    same = saved["shape"] == now["shape"] and abs(saved["sum"] - now["sum"]) <= rtol * scale
    if not same:
        raise SkullVAEError(
            f"the checkpoint was trained on {what} of shape {tuple(saved['shape'])} (sum {saved['sum']:.1f}), "
            f"not on this {what} {tuple(now['shape'])} (sum {now['sum']:.1f}); resume with the same data, grid and model",
            path,
        )


# Files the trainer writes through atomic_path (temporaries ".NAME.<8 chars>.tmp<ext>" next to NAME).
_OWN_FILES = (
    "checkpoints/stage1.pt",
    "checkpoints/stage2.pt",
    "checkpoints/refiner.pt",
    "training_log.csv",
    "curves.png",
)


def remove_stale_temporaries(out_dir: str | os.PathLike) -> list[Path]:
    """Delete temporaries of the trainer's files left by a killed run (e.g. a 0-byte checkpoint temp).

    Only temporaries of :data:`_OWN_FILES` that no live process holds (``atomic.remove_stale_temporaries``)
    are removed. Called at the start of every training run. Returns the removed paths.
    """
    removed = []
    for own in _OWN_FILES:
        final = Path(out_dir) / own
        removed += atomic.remove_stale_temporaries(final.parent, final.name)
    return removed


class DeferredInterrupt:
    """Context manager: the first Ctrl-C (SIGINT) or SIGTERM only sets ``.requested`` (checked at
    step boundaries, so the state saved is consistent); a second one interrupts at once.

    SIGTERM is what ``kill``, SLURM and ``docker stop`` send: the trainer treats it exactly like
    Ctrl-C (checkpoint, then ``KeyboardInterrupt``; the CLI exits 130). ``.signal_name`` says
    which signal came. A no-op outside the main thread.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                signum = getattr(signal, name, None)
                if signum is not None:
                    self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
