"""Build the cranial residual's training samples from a data set, and train it.

``build_residual_pool`` runs the rim fit on real and drawn defects of the given skulls (about 8 s
per sample on one CPU core) and writes one pool file; ``train_residual`` trains on one or more
pools (:mod:`SkullVAELib.implant.residual.train`) on the one training loop: the same
``training_log.csv``, checkpoints, exact resume and signals as the VAE and the facial refiner.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from SkullVAELib.bundle.folder import RESIDUAL_FILE  # MODEL/residual.safetensors: the `residual` source uses it
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.data.layout import IMPLANT_FOLDERS, LABEL_FOLDERS
from SkullVAELib.data.recipes import CRANIAL_STYLES
from SkullVAELib.implant.residual.config import ResidualConfig
from SkullVAELib.implant.residual.train import ResidualTrainConfig

__all__ = [
    "CRANIAL_STYLES",
    "RESIDUAL_FILE",
    "ResidualConfig",
    "ResidualTrainConfig",
    "build_residual_pool",
    "defective_ids",
    "train_residual",
]

CURVES_FILE = "residual_curves.png"  # the training loss and the validation Dice (and the rim fit's), from the log
SEED_BASE = 1000  # training draws use case_seed(SEED_BASE + n, id): never the evaluation's seeds 0, 1, ...


def _files(root: Path, folder: str) -> dict[str, Path]:
    """{case id: file} of ``root/folder`` ({} when there is no such folder)."""
    from SkullVAELib.data.dataset import _files_by_id

    return _files_by_id(root / folder)


def defective_ids(data: str | os.PathLike) -> list[str]:
    """The case ids of ``data``'s defective_skull/, sorted: every skull of an extra set given without ids."""
    return sorted(_files(Path(data), LABEL_FOLDERS["cranial"]))


@dataclass(frozen=True)
class _PoolCase:
    """One skull's share of a pool: its position (the drawn styles alternate by it) and files."""

    n: int
    cid: str
    complete: Path | None
    defective: Path | None
    implant: Path | None
    kinds: tuple[str, ...]
    extra_styles: tuple[str, ...]
    cfg: ResidualConfig
    draws: int
    id_prefix: str


def _case_rows(case: _PoolCase) -> list[tuple[str, str, dict]]:
    """(id, kind, sample) of one skull (a worker's task: about 8 s per sample on one core)."""
    from SkullVAELib.data.defects import case_seed
    from SkullVAELib.implant.residual.pool import drawn_samples, extra_samples, make_sample
    from SkullVAELib.io.image import read_skull

    rows, kinds, cfg, name = [], case.kinds, case.cfg, case.id_prefix + case.cid
    if "real" in kinds and case.defective is not None and case.implant is not None:
        defective = read_skull(case.defective, kind="binary")
        sample = make_sample(defective, read_skull(case.implant, kind="binary").mask, cfg)
        if sample is not None:
            rows.append((name, "real", sample))
    drawn = [k for k in kinds if k in CRANIAL_STYLES]
    if drawn and case.complete is not None:
        skull = read_skull(case.complete, kind="binary")
        for d in range(case.draws):
            # one style per draw, taking turns by case and draw: every style, one rim fit per draw
            style = drawn[(case.n + d) % len(drawn)]
            rows += [
                (name, kind, s) for kind, s in drawn_samples(skull, case_seed(SEED_BASE + d, case.cid), cfg, (style,))
            ]
    if "extra" in kinds and case.defective is not None and case.complete is None:
        seeds = [case_seed(SEED_BASE + d, case.cid) for d in range(case.draws)]
        samples = extra_samples(read_skull(case.defective, kind="binary"), seeds, cfg, styles=case.extra_styles)
        rows += [(name, "extra", sample) for sample in samples if sample is not None]
    return rows


def pool_rows(
    data: str | os.PathLike, ids: Sequence[str], kinds: Sequence[str], cfg: ResidualConfig, draws: int = 1,
    progress: ProgressCallback | None = None, id_prefix: str = "", jobs: int = 1,
    extra_styles: Sequence[str] = CRANIAL_STYLES,
):  # fmt: skip
    """(id, kind, sample) for every skull of ``data`` in ``ids``, in the order of ``ids`` whatever
    ``jobs``: ``real`` needs defective_skull/ and implant/, the drawn kinds complete_skull/,
    ``extra`` defective_skull/ alone (no ground truth; its new defects take ``extra_styles`` in
    turn). Stored ids are ``id_prefix + id`` (another data set's skulls must not share SkullFix's
    ids). ``jobs`` > 1: skulls side by side in worker processes (:mod:`.processes`; one core each)."""
    root = Path(data)
    folders = (LABEL_FOLDERS["complete"], LABEL_FOLDERS["cranial"], IMPLANT_FOLDERS["cranial"])
    complete, defective, implants = (_files(root, f) for f in folders)
    cases = [
        _PoolCase(
            n,
            cid,
            complete.get(cid),
            defective.get(cid),
            implants.get(cid),
            tuple(kinds),
            tuple(extra_styles),
            cfg,
            draws,
            id_prefix,
        )
        for n, cid in enumerate(ids)
    ]
    if jobs > 1:  # bounded by the cases, the cores and the memory limit (one skull per worker), before any work
        from SkullVAELib.workflows.batch_pool import batch_jobs

        jobs = batch_jobs(jobs, [c.complete or c.defective for c in cases if (c.complete or c.defective)])
    from SkullVAELib.workflows.processes import process_context, start_worker

    with contextlib.ExitStack() as stack:  # a pool of workers ends with the block (Ctrl-C too)
        results = map(_case_rows, cases)
        if jobs > 1:
            workers = stack.enter_context(process_context().Pool(jobs, initializer=start_worker, initargs=(1,)))
            results = workers.imap(_case_rows, cases)  # in order, as map
        for n, rows in enumerate(results, 1):
            if progress is not None:
                progress("pool", n / len(cases), f"case {cases[n - 1].cid}")
            yield from rows


def build_residual_pool(
    data: str | os.PathLike,
    ids: Sequence[str],
    out: str | os.PathLike,
    kinds: Sequence[str] = ("real", *CRANIAL_STYLES),
    cfg: ResidualConfig | None = None,
    draws: int = 1,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    id_prefix: str = "",
    jobs: int = 1,
    extra_styles: Sequence[str] = CRANIAL_STYLES,
) -> Path:
    """Write the samples of ``ids`` of ``data`` to the pool file ``out`` (``jobs`` skulls at a time,
    :func:`pool_rows`); returns ``out``."""
    from SkullVAELib.implant.residual.pool import SAMPLE_KINDS, save_pool

    out, cfg = Path(out), cfg or ResidualConfig()
    bad = [k for k in kinds if k not in SAMPLE_KINDS]
    if bad:
        raise SkullVAEError(f"unknown sample kind(s) {', '.join(bad)}; choose from {', '.join(SAMPLE_KINDS)}")
    if not extra_styles or set(extra_styles) - set(CRANIAL_STYLES):
        raise SkullVAEError(f"defect styles must be some of {', '.join(CRANIAL_STYLES)}, got {', '.join(extra_styles)}")
    if out.exists() and not overwrite:
        raise SkullVAEError("exists; pass --overwrite to replace it", out)
    if not Path(data).is_dir():
        raise SkullVAEError("no such data folder", data)
    rows = list(pool_rows(data, ids, kinds, cfg, draws, progress, id_prefix, jobs, extra_styles))
    save_pool(out, rows, cfg)
    return out


def train_residual(
    pools: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    val_pools: Sequence[str | os.PathLike] = (),
    cfg: ResidualConfig | None = None,
    train_cfg=None,
    device: str = "cpu",
    overwrite: bool = False,
    *,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train on the samples of ``pools``, select on ``val_pools``; returns ``out/residual.safetensors``
    (``training_log.csv``, ``residual_curves.png`` and ``checkpoints/residual.pt`` beside it)."""
    from SkullVAELib.implant.residual.config import save_residual
    from SkullVAELib.implant.residual.pool import load_pools
    from SkullVAELib.implant.residual.train import ResidualTrainer
    from SkullVAELib.training.checkpoint import check_run_folder

    cfg, train_cfg, out = cfg or ResidualConfig(), train_cfg or ResidualTrainConfig(), Path(out)
    check_run_folder(out, RESIDUAL_FILE, "residual", overwrite, resume)
    train = load_pools(pools, cfg)
    val = load_pools(val_pools, cfg) if val_pools else None
    if val is not None and set(train["ids"]) & set(val["ids"]):
        raise SkullVAEError("a case id is in both the training and the validation pools")
    on_epoch = None if log is None else (lambda row: log(_round_line(row)))
    trainer = ResidualTrainer(cfg, train_cfg, train, val, out, device, progress=progress, on_epoch=on_epoch)
    info = {"train_ids": sorted(set(train["ids"].tolist())), "kinds": sorted(set(train["kinds"].tolist()))}
    try:
        trainer.run(resume)
    except KeyboardInterrupt:
        trainer.restore_best()
        save_residual(out / RESIDUAL_FILE, trainer.model, cfg, {**info, **trainer.summary(), "interrupted": True})
        raise
    save_residual(out / RESIDUAL_FILE, trainer.model, cfg, {**info, **trainer.summary()})
    from SkullVAELib.workflows.curves import plot_training_rounds

    baselines = {} if val is None else {"validation Dice of the rim fit": trainer.val_rimfit}
    plot_training_rounds(trainer.history, out / CURVES_FILE, "training loss (soft Dice + BCE)", baselines)
    return out / RESIDUAL_FILE


def _round_line(row: dict) -> str:
    val = f"  val dice {row['val_dice']:.4f} (rim fit {row['val_rimfit']:.4f})" if "val_dice" in row else ""
    return f"step {row['step']:6d}  loss {row['loss']:.4f}{val}  {row['seconds']:.0f} s"
