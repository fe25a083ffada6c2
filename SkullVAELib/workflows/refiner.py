"""Train the learned facial refiner from a data set (or from grids packed for a GPU machine)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.implant.learned.config import RefinerConfig
from SkullVAELib.implant.learned.train import RefinerTrainConfig

__all__ = ["REFINER_FILE", "RefinerConfig", "RefinerTrainConfig", "pack_refiner_grids", "train_refiner"]

REFINER_FILE = "refiner.safetensors"  # MODEL/refiner.safetensors: used by `skullvae complete` when present


def pack_refiner_grids(
    data: str | os.PathLike,
    out: str | os.PathLike,
    ids: Sequence[str] | None = None,
    spacing_mm: float = 1.0,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write the complete skulls of ``data`` (ids ``ids``, None: all) on the refiner's grid to ``out``."""
    from SkullVAELib.data.dataset import split_case_name
    from SkullVAELib.implant.learned.data import pack_lps_grids
    from SkullVAELib.workflows.data import list_complete_skulls

    out = Path(out)
    if out.exists() and not overwrite:
        raise SkullVAEError("exists; pass --overwrite to replace it", out)
    files = {split_case_name(p.name)[0]: p for p in list_complete_skulls(data)}
    wanted = sorted(files) if ids is None else list(ids)
    missing = [i for i in wanted if i not in files]
    if missing:
        raise SkullVAEError(f"no complete skull for case id(s) {', '.join(missing[:5])}", data)
    pack_lps_grids({i: files[i] for i in wanted}, out, spacing_mm, progress)
    return out


def train_refiner(
    grids: str | os.PathLike,
    out: str | os.PathLike,
    train_ids: Sequence[str],
    val_ids: Sequence[str] = (),
    cfg: RefinerConfig | None = None,
    train_cfg: RefinerTrainConfig | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> Path:
    """Train on ``train_ids`` of the packed ``grids`` file, select on ``val_ids``; returns the
    weights file (``out/refiner.safetensors``; ``out/history.csv`` and ``out/history.png`` beside it)."""
    from SkullVAELib.implant.learned.data import load_lps_grids
    from SkullVAELib.implant.learned.train import RefinerTrainer, to_device

    cfg = cfg or RefinerConfig()
    out = Path(out)
    if (out / REFINER_FILE).exists() and not overwrite:
        raise SkullVAEError(f"{REFINER_FILE} exists; pass --overwrite to replace it", out)
    overlap = sorted(set(train_ids) & set(val_ids))
    if overlap:
        raise SkullVAEError(f"case id(s) {', '.join(overlap[:5])} are in both the training and validation ids")
    skulls, spacing = load_lps_grids(grids, list(train_ids) + list(val_ids))
    if abs(spacing - cfg.spacing_mm) > 1e-6:
        raise SkullVAEError(f"the grids are at {spacing:g} mm, the refiner wants {cfg.spacing_mm:g} mm", grids)
    on_device = to_device(skulls, spacing, device)
    trainer = RefinerTrainer(
        cfg,
        train_cfg or RefinerTrainConfig(),
        {i: on_device[i] for i in train_ids},
        {i: on_device[i] for i in val_ids},
        device,
    )
    trainer.fit()
    path = trainer.save(out, list(train_ids), list(val_ids))
    _plot_history(trainer.history, out / "history.png")
    return path


def _plot_history(history: list[dict], path: Path) -> None:
    """Training loss and validation Dice against steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from SkullVAELib.core.atomic import atomic_path

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [h["loss"] for h in history], label="training loss (Dice + CE)")
    ax.plot(steps, [h["val_dice"] for h in history], label="validation Dice (1 mm crop)")
    ax.set_xlabel("step")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
