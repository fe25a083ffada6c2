"""The training workflow: data folders → model-grid cache → stage 1 and/or stage 2 → model bundle.

Under ``torchrun`` (WORLD_SIZE > 1) it joins the process group itself (NCCL on CUDA, gloo on
CPU); ``TrainConfig.batch_size`` is then the global batch. Rank 0 logs, saves and draws
``curves.png`` (the trainer writes only its log and checkpoints).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from SkullVAELib.core.config import DEFAULT_RESAMPLE, NetworkConfig, TrainConfig, check_resample
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback

if TYPE_CHECKING:
    from SkullVAELib.bundle.model_bundle import ModelBundle


def _load_data(data, ids, grid, cache_dir, resample, ctx, progress, option="--train-ids"):
    from SkullVAELib.data.dataset import build_cache, discover_cases, select_cases

    cases = select_cases(discover_cases([Path(d) for d in data]), ids, option)
    if not ctx.is_main:
        ctx.barrier()  # rank 0 fills the cache first; the others then read it
    cached = build_cache(cases, grid, cache_dir=cache_dir, mode=resample, progress=progress if ctx.is_main else None)
    if ctx.is_main:
        ctx.barrier()
    return cached


def draw_curves(model_dir: str | os.PathLike) -> Path | None:
    """Draw ``MODEL/curves.png`` (Fig. 3) from the training logs of a model folder; None without rows."""
    from SkullVAELib.evaluation.figures import plot_curves
    from SkullVAELib.training.log import CURVES_NAME, curve_logs

    return plot_curves(curve_logs(model_dir), Path(model_dir) / CURVES_NAME)


def train_model(
    data: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    network: NetworkConfig | None,
    stages: dict[int, TrainConfig],
    *,
    train_ids: Sequence[str] | None = None,
    validation_ids: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    resample: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    batch_transform=None,
    augment: dict | None = None,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
    on_plan: Callable | None = None,
) -> ModelBundle:
    """Train stage 1 (β-VAE) and/or stage 2 (decoupled decoder) into the bundle folder ``out``.

    Args:
        data: data folders (merged by case id).
        out: the model bundle folder (written; for stage 2 alone it must hold a stage-1 bundle).
        network: the architecture; for stage 2 alone None means "the stage-1 bundle's", and a
            given network must have the bundle's grid.
        stages: ``{1: TrainConfig, 2: TrainConfig}`` (either or both); ``seed``, ``batch_size``,
            ``lr`` and ``device`` of the first stage are recorded in the bundle.
        train_ids / validation_ids: case ids (``case_ids.parse_id_spec`` lists); None = every case /
            no validation.
        cache_dir: model-grid cache folder (default ``$SKULLVAE_CACHE`` or ``~/.cache/skullvae``).
        resample: grid resampling mode (``config.RESAMPLE_MODES``; None = "area", or the stage-1
            bundle's mode for stage 2 alone); recorded, and used again by fit-completion and completion.
        resume: continue from ``out/checkpoints`` exactly.
        overwrite: replace a model already in ``out`` (refused otherwise, unless ``resume``).
        batch_transform: ``f(x, generator) -> x'`` applied to every training batch (augmentation).
        augment: ``augment.AugmentConfig`` fields: the batch transform is then ``augment.Augmenter``.
        progress: ``(stage, fraction, message)``.
        log: receives notes for the user (rank 0), e.g. ``print``.
        on_plan: receives the printed ``vae.plan.TrainingPlan`` (its timed estimate) before training.

    Returns:
        The trained ModelBundle (on the CPU), saved in ``out`` by rank 0 with ``curves.png``.
    """
    from SkullVAELib.training.distributed import current_context, init_distributed, shutdown_distributed
    from SkullVAELib.vae.plan import log_training_plan

    out = Path(out)
    order, network, resample, bundle, batch_transform = _check_and_prepare(
        out,
        network,
        stages,
        resample=resample,
        resume=resume,
        overwrite=overwrite,
        batch_transform=batch_transform,
        augment=augment,
    )
    first = stages[order[0]]
    created = init_distributed(first.device)
    try:
        ctx = current_context(first.device)
        cached = _load_data(data, train_ids, network.grid, cache_dir, resample, ctx, progress)
        validation = _load_validation(data, validation_ids, network.grid, cache_dir, resample, ctx, cached)
        info = _run_info(cached, first, ctx, resample, validation_ids, batch_transform)
        options = {"progress": progress, "batch_transform": batch_transform, "validation": validation}
        if ctx.is_main and log is not None:  # stages, epochs, steps and an estimated time, before the work
            (on_plan or (lambda plan: None))(log_training_plan(log, stages, network, len(cached.volumes), ctx.device))
        stage1_trained = stage2_trained = False
        if 1 in stages:
            bundle, stage1_trained = _train_stage1(network, cached, stages[1], out, info, options, resume=resume)
        else:
            _adopt_stage1_bundle(bundle, cached, info, resample, out, ctx, log)
        if 2 in stages:
            resume2 = resume and not stage1_trained  # a stage-2 checkpoint is stale once stage 1 trained further
            stage2_trained = _train_stage2(bundle, network, cached, stages[2], out, ctx, options, resume=resume2)
        bundle = _save_or_keep(bundle, out, data, ctx, log, resume=resume, trained=stage1_trained or stage2_trained)
        ctx.barrier()
    finally:
        shutdown_distributed(created)
    return bundle


def _check_and_prepare(
    out: Path,
    network: NetworkConfig | None,
    stages: dict[int, TrainConfig],
    *,
    resample: str | None,
    resume: bool,
    overwrite: bool,
    batch_transform,
    augment: dict | None,
) -> tuple[tuple[int, ...], NetworkConfig, str, ModelBundle | None, object]:
    """Check everything that needs no data, before any data is read or anything is trained.

    Builds the ``--augment`` batch transform, checks the stage order and the destination, takes the
    network and resampling mode of the stage-1 bundle for stage 2 alone, checks the network against
    the memory limit, and checks (``resume``) or removes (fresh start) the checkpoints.

    Returns:
        ``(order, network, resample, bundle, batch_transform)``: the sorted stages, the network,
        the checked resampling mode, the stage-1 bundle (stage 2 alone; None otherwise) and the
        batch transform.
    """
    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.core.limits import check_network
    from SkullVAELib.io.outputs import check_model_destination
    from SkullVAELib.training.checkpoint import checkpoint_path

    if augment is not None:  # checked before any data is read or anything written
        from SkullVAELib.data.augment import AugmentConfig, Augmenter

        batch_transform = Augmenter(AugmentConfig(**augment))
    order = tuple(sorted(stages))
    if not order or not set(order) <= {1, 2}:
        raise SkullVAEError(f"stages must be 1, 2 or both, got {order}")
    check_model_destination(out, order, resume=resume, overwrite=overwrite)  # before any data is read
    bundle = None
    if order == (2,):
        bundle = ModelBundle.load(out)  # the stage-1 encoder; one-line error if absent
        if network is not None and tuple(network.grid) != bundle.network.grid:
            raise SkullVAEError(
                f"--grid {network.grid} differs from the stage-1 bundle's grid {bundle.network.grid}", out
            )
        network = bundle.network
        resample = resample or bundle.resample
    elif network is None:
        raise SkullVAEError("stage 1 needs a network configuration")
    resample = check_resample(resample or DEFAULT_RESAMPLE)
    check_network(network.grid, network.channels, network.latent_size)  # memory limit, before allocating
    if resume and not checkpoint_path(out, order[0]).is_file():
        raise SkullVAEError("--resume: no checkpoint to resume from", checkpoint_path(out, order[0]))
    if not resume:  # a fresh start: an older training's checkpoints must never be resumed later
        _remove_checkpoints(out, order)
    return order, network, resample, bundle, batch_transform


def _load_validation(data, validation_ids, grid, cache_dir, resample, ctx, cached):
    """The validation volumes of ``validation_ids`` (None without ids); refused if they share a case id
    with the training cases ``cached``."""
    if not validation_ids:
        return None
    val = _load_data(data, validation_ids, grid, cache_dir, resample, ctx, None, "--val-ids")
    overlap = sorted(set(val.case_ids) & set(cached.case_ids))
    if overlap:
        raise SkullVAEError(f"validation and training share case ids: {', '.join(overlap[:5])}")
    return val.volumes


def _run_info(cached, first: TrainConfig, ctx, resample: str, validation_ids, batch_transform) -> dict:
    """The bundle's training record: version, data manifest and cases, the first stage's seed, batch
    size, lr and device, the world size, the resampling mode, validation ids and augmentation."""
    from SkullVAELib import __version__

    info = {
        "library_version": __version__,
        "data_manifest_hash": cached.manifest_hash,
        "train_cases": len(cached.case_ids),
        "train_case_ids": sorted(set(cached.case_ids)),
        "seed": first.seed,
        "batch_size": first.batch_size,
        "lr": first.lr,
        "world_size": ctx.world_size,
        "device": str(ctx.device),
        "resample": resample,
    }
    if validation_ids:
        info["validation_case_ids"] = sorted(set(validation_ids))
    if hasattr(batch_transform, "cfg") and hasattr(batch_transform.cfg, "to_dict"):
        info["augment"] = batch_transform.cfg.to_dict()  # augment.AugmentConfig of --augment
    return info


def _train_stage1(
    network: NetworkConfig, cached, cfg: TrainConfig, out: Path, info: dict, options: dict, *, resume: bool
) -> tuple[ModelBundle, bool]:
    """Train the β-VAE (stage 1) on ``cached.volumes``; returns its bundle (on the CPU, with ``info``
    and the stage-1 timings) and whether any epoch was trained in this run."""
    import torch

    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.training.checkpoint import checkpoint_path, load_checkpoint
    from SkullVAELib.vae.networks import VAE
    from SkullVAELib.vae.stages import train_stage1

    done_before = load_checkpoint(checkpoint_path(out, 1))["epoch"] if resume else 0
    torch.manual_seed(cfg.seed)
    vae = VAE(network)
    t0 = time.perf_counter()
    hist = train_stage1(vae, cached.volumes, cfg, out, resume=resume, **options)
    info.update(
        beta=cfg.beta,
        epochs_stage1=cfg.epochs,
        stage1_seconds=round(time.perf_counter() - t0, 2),
        seconds_per_epoch_stage1=_mean_seconds(hist),
        stage1_final=_final(hist),
    )
    bundle = ModelBundle.from_vae(vae.cpu(), info=info)
    return bundle, len(hist) > done_before


def _adopt_stage1_bundle(bundle: ModelBundle, cached, info: dict, resample: str, out: Path, ctx, log) -> None:
    """Stage 2 alone: note data that differ from the stage-1 bundle's, refuse another resampling mode,
    and record this run's ``info`` (but the stage-1 seed) in the bundle."""
    if bundle.info.get("data_manifest_hash") not in (None, cached.manifest_hash) and ctx.is_main and log:
        log("skullvae train: note: the stage-2 data differ from the stage-1 bundle's data manifest")
    if bundle.info.get("resample", DEFAULT_RESAMPLE) != resample:
        raise SkullVAEError(
            f"--resample {resample} differs from the stage-1 bundle's {bundle.resample}; stage 2 must match",
            out,
        )
    bundle.info.update({k: v for k, v in info.items() if k != "seed"})


def _train_stage2(
    bundle: ModelBundle,
    network: NetworkConfig,
    cached,
    cfg: TrainConfig,
    out: Path,
    ctx,
    options: dict,
    *,
    resume: bool,
) -> bool:
    """Train the decoupled decoder (stage 2) on the frozen encoder of ``bundle`` and put it (on the CPU)
    and the stage-2 timings into ``bundle``; returns whether any epoch was trained in this run.

    ``resume`` is False when stage 1 trained further in this run: its stage-2 checkpoint is then stale.
    """
    import torch

    from SkullVAELib.training.checkpoint import checkpoint_path, load_checkpoint
    from SkullVAELib.vae.networks import Decoder
    from SkullVAELib.vae.stages import train_stage2

    torch.manual_seed(cfg.seed + 1)
    decoder = Decoder(network)
    # A stage-2 checkpoint is stale once stage 1 trained further: stage 2 then starts afresh,
    # and the stale checkpoint goes first (a kill during stage 2's first save must not leave it).
    resume2 = resume and checkpoint_path(out, 2).is_file()
    if not resume2 and ctx.is_main:
        _remove_checkpoints(out, (2,))
    done_before2 = load_checkpoint(checkpoint_path(out, 2))["epoch"] if resume2 else 0
    t0 = time.perf_counter()
    hist = train_stage2(bundle.encoder, decoder, cached.volumes, cfg, out, resume=resume2, **options)
    bundle.decoupled_decoder = decoder.cpu()
    bundle.encoder.cpu()
    for p in bundle.encoder.parameters():
        p.requires_grad_(True)
    bundle.info.update(
        epochs_stage2=cfg.epochs,
        stage2_latent=cfg.stage2_latent,
        stage2_seed=cfg.seed + 1,
        stage2_seconds=round(time.perf_counter() - t0, 2),
        seconds_per_epoch_stage2=_mean_seconds(hist),
        stage2_final=_final(hist),
    )
    return len(hist) > done_before2


def _save_or_keep(bundle: ModelBundle, out: Path, data, ctx, log, *, resume: bool, trained: bool) -> ModelBundle:
    """Rank 0 saves ``bundle`` in ``out`` with ``curves.png`` and the model card, unless a finished
    training was resumed and nothing was trained: the saved bundle (with its completion data) is then
    kept and returned."""
    from SkullVAELib.models.card import write_training_card

    kept = None
    if ctx.is_main and resume and not trained:
        kept = _unchanged_bundle(out, bundle)  # a finished training resumed: keep its fitted model
    if kept is not None:
        if log is not None:
            log(f"skullvae train: nothing left to train; {out} is kept as it is (with its completion data)")
        return kept
    if ctx.is_main:
        bundle.save(out)
        draw_curves(out)
        write_training_card(out, [str(d) for d in data])  # model_card.json/.md (models/card.py)
    return bundle


def _remove_checkpoints(out: Path, stages: Sequence[int]) -> None:
    """Delete the checkpoints of ``stages`` (and of stage 2 when stage 1 starts afresh): they belong to
    an older training, and resuming one later would continue it, or fail on its latents."""
    from SkullVAELib.training.checkpoint import checkpoint_path

    for stage in sorted({*stages, *((2,) if 1 in stages else ())}):
        try:
            checkpoint_path(out, stage).unlink(missing_ok=True)
        except OSError as exc:
            raise SkullVAEError(f"cannot remove an older training's checkpoint: {exc.strerror}", out) from None


def _unchanged_bundle(out: Path, bundle: ModelBundle) -> ModelBundle | None:
    """The bundle saved in ``out`` when its weights are exactly ``bundle``'s (a finished training resumed:
    nothing was trained), so that its completion data (completion.json) are kept; None otherwise."""
    import torch

    from SkullVAELib.bundle.model_bundle import ModelBundle

    try:
        saved = ModelBundle.load(out)
    except SkullVAEError:
        return None
    for mine, theirs in (
        (bundle.encoder, saved.encoder),
        (bundle.decoder, saved.decoder),
        (bundle.decoupled_decoder, saved.decoupled_decoder),
    ):
        if (mine is None) != (theirs is None):
            return None
        if mine is None:
            continue
        a, b = mine.state_dict(), theirs.state_dict()
        if a.keys() != b.keys() or not all(torch.equal(a[k].detach().cpu(), b[k].detach().cpu()) for k in a):
            return None
    return saved


def _mean_seconds(history: list[dict]) -> float | None:
    secs = [r["seconds"] for r in history if r.get("seconds")]
    return round(sum(secs) / len(secs), 4) if secs else None


def _final(history: list[dict]) -> dict:
    if not history:
        return {}
    last = history[-1]
    return {k: round(float(last[k]), 5) for k in ("dice", "kld", "dice_score", "kld_per_dim") if k in last}
