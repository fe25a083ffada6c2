"""The demo: the whole pipeline on procedural phantoms, on the CPU, in minutes.

Phantoms with defects → train stage 1 (β-VAE) and stage 2 (decoupled decoder) → fit the
completion centroids → complete a held-back defective phantom → a .seg.nrrd, an implant STL
and PNG previews per defect class. It calls the same workflows as the CLI verbs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from SkullVAELib.core.config import DEFECTS, TrainConfig, network_preset
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback

# Demo sizes: small enough for < 10 minutes on 2 CPU cores, large enough to look like skulls.
DEMO_PHANTOM_SHAPE = (96, 96, 80)
DEMO_SPACING_MM = (2.2, 2.2, 2.2)
DEMO_PRESET = "demo"
# The paper's β = 100 (and even β = 1) drives every latent to the prior on a dozen 64×64×32
# phantoms (|DEV| < 0.01: nothing to complete with; docs/RESULTS.md shows the same on SkullFix).
# β = 0.01 keeps the latents informative; stage 2 still trains a decoupled decoder on them.
DEMO_BETA = 0.01
DEMO_LR = 1e-3  # the paper's 1e-4 needs far more steps than a demo has
# Measured wall time of the default demo (README quick start): stated when the demo starts.


@dataclass
class DemoOutputs:
    """Where the demo wrote its results."""

    out: Path
    model: Path
    files: list[Path] = field(default_factory=list)  # PNG, STL and .seg.nrrd files, sorted
    minutes: float = 0.0


def _preview(defective_path: Path, seg_path: Path, png_path: Path) -> None:
    """Orthogonal projections: the defective input, and the completion with the implant in yellow."""
    from SkullVAELib.evaluation.figures import save_mip_png
    from SkullVAELib.io.image import read_skull
    from SkullVAELib.io.segfile import read_segmentation

    defective = read_skull(defective_path)
    _, segments = read_segmentation(seg_path)
    completed = defective.with_mask(segments["Patient bone"] | segments["Implant"])
    save_mip_png(
        [("defective input", defective, None), ("completed, implant in yellow", completed, segments["Implant"])],
        png_path,
    )


def _announce(log: Callable[[str], None], t0: float, title: str) -> None:
    """One demo step's heading, with the minutes since ``t0`` (perf_counter s) once there are any."""
    elapsed = (time.perf_counter() - t0) / 60
    log(f"\n== {title}" + (f"  [{elapsed:.1f} min so far]" if elapsed >= 0.05 else ""))


def _train(
    data: Path,
    model: Path,
    cache: Path,
    train_ids: list[str],
    *,
    epochs: int,
    epochs2: int,
    beta: float,
    seed: int,
    progress: ProgressCallback | None,
    log: Callable[[str], None],
    on_plan: Callable | None = None,
    overwrite: bool = False,
) -> None:
    """Step 2: train stage 1 (β-VAE, ``beta``, ``epochs``) and stage 2 (``epochs2``) on ``train_ids``
    into ``model``, afresh (a model already there is replaced only with ``overwrite``)."""
    from SkullVAELib.workflows.train import train_model

    stages = {
        s: TrainConfig(stage=s, beta=beta, epochs=epochs if s == 1 else epochs2, lr=DEMO_LR, seed=seed) for s in (1, 2)
    }
    bundle = train_model(
        [data],
        model,
        network_preset(DEMO_PRESET),
        stages,
        train_ids=train_ids,
        cache_dir=cache,
        overwrite=overwrite,  # a rerun trains afresh only when the user said --overwrite
        progress=progress,
        log=log,  # the plan: stages, epochs, estimated time
        on_plan=on_plan,
    )
    log(f"wrote {bundle.kind} model bundle {model}")


def _whole_run_estimate(plan, elapsed_s: float) -> float | None:
    """Seconds the whole demo should take: the steps done so far, the plan's timed training estimate,
    and the fit and the completions after it (an encoding pass over the data and two completions of
    small phantoms: bounded by two stage-1 epochs). None when the plan could not time its steps."""
    training = [plan.stage_seconds(s) for s in plan.epochs]
    if any(v is None for v in training) or 1 not in plan.step_seconds:
        return None
    rest = 2 * plan.step_seconds[1] * plan.steps_per_epoch
    return elapsed_s + sum(training) + rest


def _complete_held_back(
    data: Path,
    model: Path,
    result: Path,
    held_back: str,
    progress: ProgressCallback | None,
    log: Callable[[str], None],
) -> None:
    """Step 4: complete the held-back phantom's defective skull of each class into ``result``.

    Per defect class: KIND.seg.nrrd, KIND_implant.stl (when there is an implant) and KIND.png.
    """
    from SkullVAELib.data.layout import LABEL_FOLDERS
    from SkullVAELib.pipeline.completer import Completer
    from SkullVAELib.pipeline.settings import CompletionSettings
    from SkullVAELib.workflows.complete import OutputOptions, complete_files

    settings = CompletionSettings(model=model)
    completer = Completer(settings)  # one for both defects: the model loads once
    for kind in DEFECTS:
        source = data / LABEL_FOLDERS[kind] / held_back
        done = complete_files(
            settings,
            source,
            result / f"{kind}.seg.nrrd",
            options=OutputOptions(implant_stl=result / f"{kind}_implant.stl"),
            progress=progress,
            completer=completer,
        )
        for warning in done.warnings:
            log(f"warning: {warning}")
        log(f"{kind}: {done.message}")
        _preview(source, result / f"{kind}.seg.nrrd", result / f"{kind}.png")


def _refuse_existing(data: Path, model: Path) -> None:
    """A data set or model already in the demo's folder is not replaced without --overwrite."""
    for folder, what in ((data, "a data set"), (model, "a trained model")):
        if folder.is_dir() and any(p.is_file() for p in folder.rglob("*")):
            raise SkullVAEError(f"{folder} already holds {what}; give --overwrite to replace it")


def demo(
    out: str | os.PathLike = "skullvae-demo",
    n: int = 12,
    epochs: int = 250,
    epochs2: int = 300,
    beta: float = DEMO_BETA,
    seed: int = 0,
    threads: int = 0,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> DemoOutputs:
    """Run the demo into ``out`` (data/, model/, result/, cache/); ``log`` receives one line per step.

    ``n`` phantoms (the last is held back), ``epochs``/``epochs2`` per stage, stage-1 ``beta``;
    ``threads`` torch threads (0 = all cores). A data set or model already in ``out`` is refused
    before any work unless ``overwrite``.
    """
    from SkullVAELib.data.case_ids import parse_id_spec
    from SkullVAELib.workflows.data import make_phantom_set, phantom_file_name
    from SkullVAELib.workflows.fit import fit_completion_data

    if n < 3:
        raise SkullVAEError(f"--n must be at least 3 (got {n})")
    if threads:
        import torch

        torch.set_num_threads(threads)
    out = Path(out).resolve()
    data, model, result, cache = out / "data", out / "model", out / "result", out / "cache"
    if not overwrite:
        _refuse_existing(data, model)
    held_back = phantom_file_name(n - 1)
    train_ids = parse_id_spec([Path(phantom_file_name(i)).stem for i in range(n - 1)])
    t0 = time.perf_counter()

    log("skullvae demo: once the training is timed, it estimates the whole run on this machine.")
    estimate: list[float] = []

    def on_plan(plan) -> None:
        whole = _whole_run_estimate(plan, time.perf_counter() - t0)
        if whole is not None:
            estimate.append(whole)
            log(f"estimated whole run ≈ {whole / 60:.1f} min on this machine now (more load, more time)")

    _announce(log, t0, f"1/5 phantoms: {n} subjects with cranial and facial defects -> {data}")
    made = make_phantom_set(
        n, data, seed, DEMO_PHANTOM_SHAPE, DEMO_SPACING_MM, with_defects=True, progress=progress, overwrite=overwrite
    )
    log(f"{made.n} phantoms (bone {min(made.bone_cm3):.0f}-{max(made.bone_cm3):.0f} cm³) -> {data}")

    _announce(log, t0, f"2/5 train stage 1 (β = {beta:g}) and stage 2 (decoupled decoder) -> {model}")
    _train(
        data,
        model,
        cache,
        train_ids,
        epochs=epochs,
        epochs2=epochs2,
        beta=beta,
        seed=seed,
        progress=progress,
        log=log,
        on_plan=on_plan,
        overwrite=overwrite,
    )

    _announce(log, t0, "3/5 fit completion centroids (DEV vectors) on the training phantoms")
    fitted = fit_completion_data(model, [data], train_ids=train_ids, cache_dir=cache, progress=progress)
    log(", ".join(f"|DEV_{d}| = {v:.4f}" for d, v in fitted.dev_norms.items()))

    _announce(log, t0, f"4/5 complete the held-back defective phantom {Path(held_back).stem}")
    _complete_held_back(data, model, result, held_back, progress, log)

    outputs = DemoOutputs(out, model, minutes=(time.perf_counter() - t0) / 60)
    outputs.files = sorted(p for p in out.rglob("*") if p.suffix in {".png", ".stl"} or p.name.endswith(".seg.nrrd"))
    against = f" (estimated {estimate[0] / 60:.1f} min)" if estimate else ""
    _announce(log, t0, f"5/5 done in {outputs.minutes:.1f} min{against}. Outputs:")
    return outputs
