"""The completion workflow: a defective skull file in; segmentation, STL and uncertainty files out.

Everything is checked and computed before the first file is written, so a bad input writes
nothing. A γ sweep writes one result per γ (``result_g0.50.seg.nrrd``) and a montage.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from SkullVAELib.core.config import DEFECT_CHOICES, CompletionConfig, check_gamma
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback, no_progress

DEFAULT_SAMPLES = 10  # uncertainty samples when an uncertainty map is asked for without a count
SEGMENTS = (("Completed skull", (0.95, 0.92, 0.84)), ("Implant", (1.0, 0.85, 0.0)))


@dataclass
class CompletedFiles:
    """What :func:`complete_files` wrote.

    Attributes:
        record: the result as JSON (the ``result`` of ``--progress json``'s last line): the main
            result (γ = 1 if swept, else the last), ``results`` (one per γ), ``montage``, ``timings`` (s).
        message: one-line summary ("cranial defect (0.93), implant 12.3 cm³, 4.1 s").
        warnings: notes for the user (e.g. an empty implant's STL was not written).
    """

    record: dict
    message: str
    warnings: list[str] = field(default_factory=list)

    @property
    def results(self) -> list[dict]:
        return self.record["results"]


def sweep_path(output: Path, gamma: float, suffix: str | None = None) -> Path:
    """result.seg.nrrd -> result_g0.50.seg.nrrd (``suffix`` replaces the extension)."""
    name = output.name
    stem, ext = (name[: name.index(".")], name[name.index(".") :]) if "." in name else (name, "")
    return output.with_name(f"{stem}_g{gamma:.2f}{ext if suffix is None else suffix}")


def set_threads(n: int | None) -> None:
    """CPU threads of torch and ITK (None: leave the defaults)."""
    if n is None:
        return
    if n < 1:
        raise SkullVAEError(f"--threads must be >= 1, got {n}")
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(n)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)


def _plan_outputs(input, model, output: Path, gammas, implant_stl, uncertainty):
    """Every file the call will write, checked before any work (outputs.OutputPlan): not an input,
    not in the model, not twice, the right extension, a folder that exists or is one new level."""
    from SkullVAELib.io.outputs import (
        PNG_EXTENSIONS,
        SEGMENTATION_EXTENSIONS,
        STL_EXTENSIONS,
        VOLUME_EXTENSIONS,
        OutputPlan,
    )

    plan = OutputPlan(inputs=[input], protected=[model])
    sweep = len(gammas) > 1
    for gamma in gammas:
        pick = (lambda p, g=gamma: sweep_path(Path(p), g)) if sweep else Path
        plan.add(pick(output), "--output", SEGMENTATION_EXTENSIONS)
        if implant_stl:
            plan.add(pick(implant_stl), "--implant-stl", STL_EXTENSIONS)
        if uncertainty:
            plan.add(pick(uncertainty), "--uncertainty", VOLUME_EXTENSIONS)
    if sweep:
        plan.add(
            output.with_name(output.name.split(".")[0] + "_gamma_sweep.png"), "the γ-sweep montage", PNG_EXTENSIONS
        )
    return plan


def _write_one(result, output: Path, stl: Path | None, uncertainty: Path | None, frame: str, timings, warnings, tx):
    """Write one result's files through the output transaction ``tx`` (renamed together at its end)."""
    from SkullVAELib.io.image import write_scalar
    from SkullVAELib.io.segfile import Segment, write_segmentation
    from SkullVAELib.io.surface import write_implant_stl

    def timed(key: str, start: float) -> None:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start

    t = time.perf_counter()
    masks = (result.completed.mask, result.implant.mask)
    segments = [Segment(n, m, c) for (n, c), m in zip(SEGMENTS, masks, strict=True)]
    write_segmentation(tx.path(output), result.completed, segments)
    timed("write_segmentation", t)
    written = {"output": str(output), "implant_stl": None, "uncertainty": None}
    if stl is not None:
        if result.implant.mask.any():
            t = time.perf_counter()
            write_implant_stl(result.implant, tx.path(stl), coordinate_system=frame)
            timed("write_stl", t)
            written["implant_stl"] = str(stl)
        else:
            warnings.append(f"the implant is empty; {stl} not written")
    if uncertainty is not None and result.uncertainty is not None:
        t = time.perf_counter()
        write_scalar(result.completed, result.uncertainty, tx.path(uncertainty))
        timed("write_uncertainty", t)
        written["uncertainty"] = str(uncertainty)
    return written


def complete_files(
    model: str | os.PathLike,
    input: str | os.PathLike,
    output: str | os.PathLike,
    gammas: Sequence[float] = (1.0,),
    *,
    defect: str = "auto",
    implant_stl: str | os.PathLike | None = None,
    stl_frame: str = "LPS",
    uncertainty: str | os.PathLike | None = None,
    samples: int | None = None,
    raw: bool = False,
    input_kind: str = "auto",
    hu_threshold: float = 300.0,
    threshold: float = 0.5,
    min_island: float = 100.0,
    max_distance: float = 10.0,
    resample: str | None = None,
    device: str = "auto",
    threads: int | None = None,
    precision: str = "float32",
    seed: int = 0,
    refine: bool = True,
    symmetry: bool = True,
    fit_steps: int = 0,
    progress: ProgressCallback | None = None,
    atlas: str | os.PathLike | bool | None = None,
    refiner: str | os.PathLike | bool | None = None,
) -> CompletedFiles:
    """Complete the defective skull in ``input`` with the bundle ``model``; write ``output`` (.seg.nrrd).

    Args:
        gammas: one γ, or several (a sweep: one file per γ, named by :func:`sweep_path`, and a montage).
        defect: "auto" (classified), "cranial" or "facial".
        implant_stl: also the implant surface (binary STL, ``stl_frame`` "LPS" or "RAS", mm).
        uncertainty: also the bone frequency over ``samples`` samples (float NRRD; default 10 samples).
        raw: completed skull = raw decoded skull (the paper); default keeps the input bone.
        resample: grid resampling mode; None = the one the model was trained with.
        refine: for a cranial defect, build the implant with the geometric rim fit from the
            patient's own bone at the original resolution (:mod:`SkullVAELib.implant.refine`); False
            keeps the model's implant (the paper's method). Facial defects keep the model's.
        symmetry: let the rim fit use the skull's mirror image where it covers the hole.
        fit_steps: Adam steps of the test-time fit of z to the patient's bone (``testtime_fit``; 0 = off).
        atlas: an atlas set folder (``skullvae build-atlas``) that fills the defects the rim fit
            cannot (facial ones) when ``refine`` is on; None uses ``MODEL/atlas`` when the bundle
            has one, False uses none (the model's implant is kept there).
        refiner: the learned facial refiner (``skullvae train-refiner``: a ``refiner.safetensors``
            file) that builds facial implants when ``refine`` is on, before the atlas set; None
            uses ``MODEL/refiner.safetensors`` when the bundle has one, False uses none.
        Other settings as :class:`~SkullVAELib.core.config.CompletionConfig` and ``read_skull``.

    Returns:
        :class:`CompletedFiles`. Raises SkullVAEError (naming the file) on bad input.
    """
    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.io.image import read_skull
    from SkullVAELib.io.inputs import read_information
    from SkullVAELib.models.store import resolve_model
    from SkullVAELib.vae.completion import complete

    start = time.perf_counter()
    gammas = [check_gamma(g) for g in gammas]
    if not gammas:
        raise SkullVAEError("no γ given")
    if defect not in DEFECT_CHOICES:
        raise SkullVAEError(f"defect must be one of {', '.join(DEFECT_CHOICES)}, got {defect!r}")
    samples = samples if samples is not None else (DEFAULT_SAMPLES if uncertainty else 0)
    if samples < 0:
        raise SkullVAEError(f"--samples must be >= 0, got {samples}")
    output = Path(output)
    if output.is_dir():
        raise SkullVAEError("--output is a folder; give a file name like result.seg.nrrd", output)
    # Cheap checks before the model loads: the input is a readable image, each output's folder
    # exists or is one new level (never a chain of folders made up from a typo), a model name resolves.
    read_information(input)
    model = resolve_model(model)  # a bundle folder, or the name of an installed model (skullvae models)
    plan = _plan_outputs(input, model, output, gammas, implant_stl, uncertainty)
    set_threads(threads)
    progress = progress or no_progress
    timings: dict[str, float] = {}

    progress("load", 0.0, "loading the model")
    bundle = ModelBundle.load(model, device="cpu")
    atlas_set = _atlas_set(model, atlas) if refine else None
    facial_refiner = _facial_refiner(model, refiner, device) if refine else None
    # A facial implant from the refiner or the atlas set does not use the model's facial shift, so
    # a model without a facial centroid (trained on cranial defects only) still serves: its γ = 0
    # reconstruction is computed and the refiner's (or atlas) implant replaces its implant.
    independent = facial_refiner is not None or atlas_set is not None
    atlas_only = independent and defect == "facial" and "facial" not in bundle.defect_classes
    if any(g != 0 for g in gammas) and not atlas_only:
        bundle.require_completion(model)
    progress("read", 0.0, f"reading {input}")
    t = time.perf_counter()
    skull = read_skull(input, kind=input_kind, hu_threshold=hu_threshold)
    timings["read"] = time.perf_counter() - t

    results, sources, refined, refine_cache = [], [], [], {}
    if atlas_only:
        which = "learned refiner" if facial_refiner is not None else "atlas set"
        refined.append(
            f"the model has no facial centroid: the implant comes from the {which} alone (γ does not change it)"
        )
    for n, gamma in enumerate(gammas):
        cfg = CompletionConfig(
            gamma=0.0 if atlas_only else gamma,
            defect=defect,
            keep_patient_bone=not raw,
            threshold=threshold,
            min_island_mm3=min_island,
            max_distance_mm=max_distance,
            uncertainty_samples=samples,
            resample=resample,
            seed=seed,
            fit_steps=fit_steps,
        )

        def stage_progress(stage, fraction, message="", n=n):
            progress(stage, (n + fraction) / len(gammas), message)

        try:
            result = complete(skull, bundle, cfg, device=device, progress=stage_progress, precision=precision)
        except SkullVAEError as exc:
            raise SkullVAEError(exc.message, exc.path or input) from None
        if atlas_only:
            result = replace(result, gamma=gamma)
        source = "model"
        if refine and gamma != 0:
            from SkullVAELib.implant.refine import refine_completion

            stage_progress("refine", 0.9, "building the implant from the patient's bone at full resolution")
            done = refine_completion(
                result,
                skull,
                symmetry,
                keep_patient_bone=not raw,
                cache=refine_cache,
                atlas=atlas_set,
                progress=stage_progress,
                refiner=facial_refiner,
            )
            source = done.source
            refined += [m for m in done.messages if m not in refined]
        elif gamma != 0:
            from SkullVAELib.implant.check import check_implant

            refined += [m for m in check_implant(result.implant.mask, skull.voxel_volume_mm3) if m not in refined]
        for key, value in result.timings.items():
            timings[key] = timings.get(key, 0.0) + value
        results.append(result)
        sources.append(source)

    progress("write", 0.0, f"writing {output}")
    sweep = len(gammas) > 1
    written, warnings = [], list(refined)
    montage = None
    with plan.transaction() as tx:  # all files appear together at the end, or none
        for gamma, result in zip(gammas, results, strict=True):
            stl = Path(implant_stl) if implant_stl else None
            unc = Path(uncertainty) if uncertainty else None
            if sweep:
                stl = sweep_path(stl, gamma) if stl else None
                unc = sweep_path(unc, gamma) if unc else None
            out = sweep_path(output, gamma) if sweep else output
            written.append(_write_one(result, out, stl, unc, stl_frame, timings, warnings, tx))
        if sweep:
            from SkullVAELib.evaluation.figures import plot_gamma_sweep, sweep_rows

            montage = output.with_name(output.name.split(".")[0] + "_gamma_sweep.png")
            rows = sweep_rows(gammas, [r.completed for r in results], [r.implant for r in results])
            plot_gamma_sweep(rows, tx.path(montage), title=Path(input).name, dpi=80)
    timings["total"] = time.perf_counter() - start

    summaries = [
        {
            **w,
            "gamma": r.gamma,
            "defect": r.defect,
            "confidence": round(r.confidence, 4),
            "implant_volume_mm3": round(r.implant_volume_mm3, 1),
            "implant_source": src,
        }
        for w, r, src in zip(written, results, sources, strict=True)
    ]
    main = summaries[gammas.index(1.0)] if 1.0 in gammas else summaries[-1]
    record = {
        **main,
        "output": str(output) if not sweep else main["output"],
        "results": summaries,
        "montage": None if montage is None else str(montage),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    message = (
        f"{record['defect']} defect ({record['confidence']:.2f}), implant "
        f"{record['implant_volume_mm3'] / 1000:.1f} cm³ ({record['implant_source']}), {timings['total']:.1f} s"
    )
    return CompletedFiles(record, message, warnings)


def _atlas_set(model: Path, atlas: str | os.PathLike | bool | None):
    """The AtlasSet ``complete_files`` should use (see its ``atlas`` argument), or None."""
    from SkullVAELib.implant.atlas import AtlasSet
    from SkullVAELib.workflows.atlas import bundle_atlas

    if atlas is False:
        return None
    folder = bundle_atlas(model) if atlas is None or atlas is True else Path(atlas)
    return None if folder is None else AtlasSet.load(folder)


def _facial_refiner(model: Path, refiner: str | os.PathLike | bool | None, device: str):
    """The FacialRefiner ``complete_files`` should use (see its ``refiner`` argument), or None."""
    from SkullVAELib.core.devices import resolve_device
    from SkullVAELib.implant.learned.infer import FacialRefiner
    from SkullVAELib.workflows.refiner import REFINER_FILE

    if refiner is False:
        return None
    path = Path(model) / REFINER_FILE if refiner is None or refiner is True else Path(refiner)
    if not path.is_file():
        if refiner is None or refiner is True:
            return None
        raise SkullVAEError("no such refiner file", path)
    return FacialRefiner.load(path, str(resolve_device(device)))
