"""Train the learned facial refiner from a data set (or from grids packed for a GPU machine).

The refiner trains on the one training loop (``training.loop.Trainer``), as the VAE does: the same
``training_log.csv``, checkpoints (``OUT/checkpoints/refiner.pt``), exact ``resume`` and signals.
Ctrl-C or SIGTERM writes the best weights so far to ``OUT/refiner.safetensors``, marked
``"interrupted": true`` in its info, and re-raises ``KeyboardInterrupt`` (the CLI exits 130);
``resume`` continues the run and replaces them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from SkullVAELib.bundle.folder import REFINER_FILE  # MODEL/refiner.safetensors: `complete` uses it
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.implant.learned.config import RefinerConfig
from SkullVAELib.implant.learned.train import RefinerTrainConfig

__all__ = [
    "REFINER_FILE",
    "RefinerConfig",
    "RefinerTrainConfig",
    "extra_faces",
    "pack_refiner_grids",
    "packed_extras",
    "train_refiner",
]

CURVES_FILE = "refiner_curves.png"  # the training loss and validation Dice, drawn from training_log.csv


EXTRA_PREFIX = "extra-"  # ids of --extra skulls in the packed grids and the training ids


def extra_faces(folder: str | os.PathLike) -> dict[str, Path]:
    """{``extra-ID``: file} for the defective skulls of ``folder`` (its defective_skull/, or itself):
    skulls with a cranial defect whose face is intact serve the facial refiner as complete skulls."""
    from SkullVAELib.data.layout import LABEL_FOLDERS, split_case_name

    folder = Path(folder)
    if (folder / LABEL_FOLDERS["cranial"]).is_dir():
        folder = folder / LABEL_FOLDERS["cranial"]
    if not folder.is_dir():
        raise SkullVAEError("not a folder of skulls", folder)
    files = {EXTRA_PREFIX + split_case_name(p.name)[0]: p for p in sorted(folder.iterdir())
             if p.is_file() and split_case_name(p.name) is not None}  # fmt: skip
    if not files:
        raise SkullVAEError("no skull images in this folder", folder)
    return files


def packed_extras(grids: str | os.PathLike) -> list[str]:
    """The ``extra-`` ids of a packed grid file (packed with ``extra``), sorted; refuses a file that holds none."""
    from SkullVAELib.implant.learned.data import packed_ids

    ids = [i for i in packed_ids(grids) if i.startswith(EXTRA_PREFIX)]
    if not ids:
        raise SkullVAEError("holds no extra skulls (pack it with --extra)", grids)
    return ids


def pack_refiner_grids(
    data: str | os.PathLike,
    out: str | os.PathLike,
    ids: Sequence[str] | None = None,
    spacing_mm: float = 1.0,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    extra: str | os.PathLike | None = None,
    fractions: bool = False,
) -> Path:
    """Write the complete skulls of ``data`` (ids ``ids``, None: all), and with ``extra`` the skulls
    of :func:`extra_faces`, on the refiner's grid to ``out``; with ``fractions`` their anti-aliased
    bone fractions too (for a refiner with ``soft_input``)."""
    from SkullVAELib.data.layout import split_case_name
    from SkullVAELib.implant.learned.data import pack_lps_grids
    from SkullVAELib.workflows.data import list_complete_skulls

    out = Path(out)
    if out.exists() and not overwrite:
        raise SkullVAEError("exists; pass --overwrite to replace it", out)
    files = {split_case_name(p.name)[0]: p for p in list_complete_skulls(data)}
    wanted = sorted(files) if ids is None else [i for i in ids if not i.startswith(EXTRA_PREFIX)]
    missing = [i for i in wanted if i not in files]
    if missing:
        raise SkullVAEError(f"no complete skull for case id(s) {', '.join(missing[:5])}", data)
    chosen = {i: files[i] for i in wanted}
    if extra is not None:
        chosen.update(extra_faces(extra))
    pack_lps_grids(chosen, out, spacing_mm, progress, fractions)
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
    *,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train on ``train_ids`` of the packed ``grids`` file, select on ``val_ids``; returns the weights
    file ``out/refiner.safetensors`` (``training_log.csv``, ``refiner_curves.png`` and
    ``checkpoints/refiner.pt`` beside it). ``log`` receives one line per validation round."""
    from SkullVAELib.implant.learned.data import load_lps_fractions, load_lps_grids
    from SkullVAELib.implant.learned.train import RefinerTrainer, to_device
    from SkullVAELib.training.checkpoint import check_run_folder

    cfg, train_cfg, out = cfg or RefinerConfig(), train_cfg or RefinerTrainConfig(), Path(out)
    check_run_folder(out, REFINER_FILE, "refiner", overwrite, resume)
    overlap = sorted(set(train_ids) & set(val_ids))
    if overlap:
        raise SkullVAEError(f"case id(s) {', '.join(overlap[:5])} are in both the training and validation ids")
    skulls, spacing = load_lps_grids(grids, list(train_ids) + list(val_ids))
    if abs(spacing - cfg.spacing_mm) > 1e-6:
        raise SkullVAEError(f"the grids are at {spacing:g} mm, the refiner wants {cfg.spacing_mm:g} mm", grids)
    fractions = load_lps_fractions(grids, list(skulls)) if cfg.soft_input or train_cfg.soft_target else None
    on_device = to_device(skulls, spacing, device, fractions)
    train = {i: on_device[i] for i in train_ids}
    val = {i: on_device[i] for i in val_ids}
    on_epoch = None if log is None else (lambda row: log(_round_line(row, train_cfg.steps)))
    trainer = RefinerTrainer(cfg, train_cfg, train, val, out, device, progress=progress, on_epoch=on_epoch)
    ids = {"train_ids": list(train_ids), "val_ids": list(val_ids)}
    try:
        trainer.run(resume)
    except KeyboardInterrupt:
        trainer.restore_best()
        path = _save(trainer, out, {**ids, "interrupted": True})
        if log is not None:
            log(
                f"interrupted after {trainer.steps_done} steps: the best weights so far are in {path}, marked "
                "interrupted; train again with --resume to continue"
            )
        raise
    path = _save(trainer, out, ids)
    from SkullVAELib.workflows.curves import plot_training_rounds

    plot_training_rounds(trainer.history, out / CURVES_FILE, "training loss (Dice + CE)")
    return path


def _save(trainer, out: Path, info: dict) -> Path:
    from SkullVAELib.implant.learned.config import save_refiner

    save_refiner(out / REFINER_FILE, trainer.model, trainer.refiner_cfg, {**info, **trainer.summary()})
    return out / REFINER_FILE


def _round_line(row: dict, steps: int) -> str:
    val = f"  val dice {row['val_dice']:.4f}  best round {row['best_epoch']}" if "val_dice" in row else ""
    return f"step {row['step']:6d}/{steps}  loss {row['loss']:.4f}{val}  {row['seconds']:.0f} s"
