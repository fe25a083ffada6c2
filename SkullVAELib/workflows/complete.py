"""The completion workflow: defective skull files in; segmentation, STL and uncertainty files out.

One :class:`~SkullVAELib.pipeline.completer.Completer` serves every input of a call (models load
once). Everything is checked and computed before the first file is written, so a bad input writes
nothing. A γ sweep writes one result per γ (``result_g0.50.seg.nrrd``) and a montage; a batch
(several inputs, or a folder) writes ``OUT/<case>.seg.nrrd`` per input into one output folder.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from SkullVAELib.core.config import check_gamma
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback, no_progress
from SkullVAELib.io.skull_input import SkullReading
from SkullVAELib.pipeline.settings import CompletionSettings

DEFAULT_SAMPLES = 10  # uncertainty samples when an uncertainty map is asked for without a count
PATIENT_SEGMENT, IMPLANT_SEGMENT, COMPLETED_SEGMENT = "Patient bone", "Implant", "Completed skull"


@dataclass
class CompletedFiles:
    """What :func:`complete_files` wrote.

    Attributes:
        record: the result as JSON (the ``result`` of ``--progress json``'s last line): the main
            result (γ = 1 if swept, else the last), ``results`` (one per γ), ``montage``, ``timings`` (s).
        message: one-line summary ("cranial defect, implant 12.3 cm³ (rimfit), 4.1 s").
        warnings: notes for the user (e.g. an empty implant's STL was not written).
    """

    record: dict
    message: str
    warnings: list[str] = field(default_factory=list)

    @property
    def results(self) -> list[dict]:
        return self.record["results"]


@dataclass(frozen=True)
class OutputOptions:
    """Which files a completion writes besides the segmentation.

    Attributes:
        implant_stl: the implant surface (binary STL, mm), or None; ``stl_frame`` "LPS" or "RAS".
        uncertainty: the bone frequency over the model's samples (float NRRD), or None.
        completed_segment: also write the completed skull as a third (overlapping) segment.
    """

    implant_stl: Path | None = None
    stl_frame: str = "LPS"
    uncertainty: Path | None = None
    completed_segment: bool = False


_WARM: dict[str, object] = {}  # settings -> Completer: the last one stays loaded (skullvae worker, batches)


def warm_completer(settings: CompletionSettings):
    """The :class:`~SkullVAELib.pipeline.completer.Completer` of ``settings``, kept from the previous
    call with the same settings (its model parts stay loaded), else a new one (the old is dropped)."""
    from SkullVAELib.pipeline.completer import Completer

    key = repr(settings) + _parts_stamp(settings)  # a model replaced in place is loaded afresh
    if key not in _WARM:
        _WARM.clear()
        _WARM[key] = Completer(settings)
    return _WARM[key]


def model_parts(settings: CompletionSettings) -> list[Path]:
    """Every model part the settings name: the model folder, an atlas folder, refiner and residual files
    (those given outside the folder too). No output of a call may be written there."""
    paths = [settings.model, *settings.learned.paths, *settings.residual.paths, settings.atlas.path]
    return [Path(p) for p in paths if p is not None]


def _parts_stamp(settings: CompletionSettings) -> str:
    """The modification times of the model parts the settings name (empty without any): the model
    folder's files and its atlas set (``MODEL/atlas``, every file below it), the given files, and
    every file below a given atlas folder."""
    from SkullVAELib.bundle.folder import ATLAS_FOLDER

    files = []
    for path in model_parts(settings):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            atlas = path / ATLAS_FOLDER if path == settings.model else path
            below = sorted(f for f in atlas.rglob("*") if f.is_file()) if atlas.is_dir() else []
            files += [*sorted(f for f in path.glob("*") if f.is_file()), *below]
    return "".join(f"|{f}:{f.stat().st_mtime_ns}" for f in dict.fromkeys(files))


# the extensions a γ sweep keeps at the end of a name (the longest first: .seg.nrrd before .nrrd)
_NAMED_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd", ".stl", ".png")


def _split_extension(name: str) -> tuple[str, str]:
    """("a.v1", ".seg.nrrd") for "a.v1.seg.nrrd": a known extension, else all from the first dot."""
    for ext in _NAMED_EXTENSIONS:
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[len(name) - len(ext) :]
    return (name[: name.index(".")], name[name.index(".") :]) if "." in name else (name, "")


def sweep_path(output: Path, gamma: float, suffix: str | None = None) -> Path:
    """result.seg.nrrd -> result_g0.50.seg.nrrd (``suffix`` replaces the extension); a dotted name
    keeps its dots: a.v1.seg.nrrd -> a.v1_g0.50.seg.nrrd."""
    stem, ext = _split_extension(output.name)
    return output.with_name(f"{stem}_g{gamma:.2f}{ext if suffix is None else suffix}")


def set_threads(n: int | None) -> None:
    """CPU threads of torch, ITK and the BLAS/OpenMP pools under NumPy and SciPy (None or 0: leave the
    libraries' defaults, as ``--threads 0`` says); at most the CPU count. Batch workers call it with their
    share of the cores: a BLAS pool of every core in each worker would oversubscribe them (the rim fit's
    spline solves)."""
    if n is None or n == 0:
        return
    if n < 1:
        raise SkullVAEError(f"--threads must be >= 1, got {n}")
    n = min(n, os.cpu_count() or 1)
    import SimpleITK as sitk
    from threadpoolctl import threadpool_limits

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    threadpool_limits(limits=n)  # process-wide (the returned object would only undo it)
    os.environ["SKULLVAE_THREADS"] = str(n)  # the ray casting's threads (implant.raymarch.cpu_threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:  # torch is imported only by the sources that need it (3 s); it reads this when it is
        os.environ["OMP_NUM_THREADS"] = str(n)


def planned_outputs(output: Path, gammas: Sequence[float], options: OutputOptions) -> list[tuple[Path, str, tuple]]:
    """Every file one completion of ``output`` writes besides its run manifests, as (path, the option
    that names it, its allowed extensions): per γ of a sweep, and the sweep's montage."""
    from SkullVAELib.io.outputs import PNG_EXTENSIONS, SEGMENTATION_EXTENSIONS, STL_EXTENSIONS, VOLUME_EXTENSIONS

    planned = []
    sweep = len(gammas) > 1
    for gamma in gammas:
        pick = (lambda p, g=gamma: sweep_path(Path(p), g)) if sweep else Path
        planned.append((pick(output), "--output", SEGMENTATION_EXTENSIONS))
        if options.implant_stl:
            planned.append((pick(options.implant_stl), "--implant-stl", STL_EXTENSIONS))
        if options.uncertainty:
            planned.append((pick(options.uncertainty), "--uncertainty", VOLUME_EXTENSIONS))
    if sweep:
        planned.append((_montage_path(output), "the γ-sweep montage", PNG_EXTENSIONS))
    return planned


def protected_parts(settings: CompletionSettings) -> dict[Path, str]:
    """{model part: what it is} of ``settings`` (:func:`model_parts`), for the output plan to protect: the model
    folder, an atlas folder, a refiner or residual file given outside the folder."""
    return {
        part: "model folder" if part == settings.model else "atlas folder" if part.is_dir() else "model file"
        for part in model_parts(settings)
    }


def _plan_outputs(input, settings: CompletionSettings, output: Path, gammas, options: OutputOptions):
    """Every file the call will write, checked before any work (outputs.OutputPlan); none may be an
    input or lie in a model part (:func:`model_parts`: --model, --atlas, --refiner, --residual)."""
    from SkullVAELib.io.outputs import OutputPlan

    plan = OutputPlan(inputs=[input], protected=protected_parts(settings))
    for path, option, extensions in planned_outputs(output, gammas, options):
        plan.add(path, option, extensions)
    return plan


def _montage_path(output: Path) -> Path:
    """result.seg.nrrd -> result_gamma_sweep.png (a dotted name keeps its dots: a.v1_gamma_sweep.png)."""
    return output.with_name(_split_extension(output.name)[0] + "_gamma_sweep.png")


def _write_one(skull, result, output: Path, options: OutputOptions, stl, unc, timings, warnings, tx):
    """Write one result's files through the output transaction ``tx`` (renamed together at its end)."""
    from SkullVAELib.io.image import write_scalar
    from SkullVAELib.io.segfile import Segment, write_segmentation

    def timed(key: str, start: float) -> None:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start

    t = time.perf_counter()
    segments = [Segment(PATIENT_SEGMENT, skull.mask), Segment(IMPLANT_SEGMENT, result.implant.mask)]
    if options.completed_segment:
        segments.append(Segment(COMPLETED_SEGMENT, result.completed.mask))
    write_segmentation(tx.path(output), result.completed, segments)
    tx.record_run(output)  # <output>.run.json: this run's id and every file's hash, renamed in last
    timed("write_segmentation", t)
    written = {"output": str(output), "implant_stl": None, "uncertainty": None}
    if stl is not None:
        if result.implant.mask.any():
            from SkullVAELib.io.surface import write_implant_stl  # VTK: only when an STL is asked for

            t = time.perf_counter()
            write_implant_stl(result.implant, tx.path(stl), coordinate_system=options.stl_frame)
            timed("write_stl", t)
            written["implant_stl"] = str(stl)
        else:
            warnings.append(f"the implant is empty; {stl} not written")
    if unc is not None and result.uncertainty is not None:
        t = time.perf_counter()
        write_scalar(result.completed, result.uncertainty, tx.path(unc))
        timed("write_uncertainty", t)
        written["uncertainty"] = str(unc)
    return written


def complete_files(
    settings: CompletionSettings,
    input: str | os.PathLike,
    output: str | os.PathLike,
    gammas: Sequence[float] = (1.0,),
    *,
    options: OutputOptions | None = None,
    reading: SkullReading | None = None,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
    completer=None,
) -> CompletedFiles:
    """Complete the defective skull in ``input``; write ``output`` (.seg.nrrd) and the asked-for files.

    Args:
        settings: the completion recipe (model folder or none, implant sources, γ, ...).
        gammas: one γ, or several (a sweep: one file per γ, named by :func:`sweep_path`, and a montage).
        options: the other files to write (STL, uncertainty map, the completed-skull segment).
        reading: how the input is read, and which of its segments, labels or series is the skull
            (:class:`~SkullVAELib.io.skull_input.SkullReading`; default: the only one, kind from the values).
        completer: a :class:`~SkullVAELib.pipeline.completer.Completer` to reuse (a batch); default
            a new one from ``settings``.

    Returns:
        :class:`CompletedFiles`. Raises SkullVAEError (naming the file) on bad input.
    """

    start = time.perf_counter()
    options = options or OutputOptions()
    gammas = [check_gamma(g) for g in gammas]
    if not gammas:
        raise SkullVAEError("no γ given")
    output = Path(output)
    if output.is_dir():
        raise SkullVAEError("--output is a folder; give a file name like result.seg.nrrd", output)
    reading = reading or SkullReading()
    reading.information(input)  # a readable image, before any model loads
    plan = _plan_outputs(input, settings, output, gammas, options)
    set_threads(threads)
    progress = progress or no_progress
    if completer is None:
        progress("load", 0.0, "preparing the implant sources")
        completer = warm_completer(settings)
    progress("read", 0.0, f"reading {input}")
    t = time.perf_counter()
    skull = reading.read(input)
    timings = {"read": time.perf_counter() - t}
    try:
        results = completer.sweep(skull, gammas, progress)
    except SkullVAEError as exc:
        raise SkullVAEError(exc.message, exc.path or input) from None
    for result in results:
        for key, value in result.timings.items():
            if key != "total":
                timings[key] = timings.get(key, 0.0) + value
    progress("write", 0.0, f"writing {output}")
    header_notes = skull.metadata.get("warnings", [])  # e.g. a missing spacing read as 1 mm
    warnings = list(dict.fromkeys([*header_notes, *(w for r in results for w in r.warnings)]))
    written, montage, run_id = _write_all(skull, results, output, options, gammas, timings, warnings, plan, input)
    timings["total"] = time.perf_counter() - start
    return _completed_files(results, written, gammas, montage, timings, warnings, run_id, settings)


def _completed_files(results, written, gammas, montage, timings, warnings, run_id, settings) -> CompletedFiles:
    """The call's JSON record (the main result: γ = 1 if swept, else the last) and its summary line."""
    summaries = [{**w, **r.record()} for w, r in zip(written, results, strict=True)]
    for s in summaries:
        s.pop("timings", None)
        s.pop("warnings", None)
    main = summaries[gammas.index(1.0)] if 1.0 in gammas else summaries[-1]
    record = {
        **main,
        "results": summaries,
        "montage": None if montage is None else str(montage),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "warnings": warnings,
        "run_id": run_id,
        "settings": settings.summary(),
    }
    source = main["implant_source"] + (f" + {main['implant_variant']}" if main["implant_variant"] else "")
    score = "" if main["implant_quality"] is None else f", quality {main['implant_quality']:.2f}"
    check = main.get("implant_self_check") or {}
    if check.get("dsc") is not None:
        score += f", self-check DSC {check['dsc']:.2f} on {check['places']} place(s)"
    message = (
        f"{main['defect']} defect, implant {main['implant_volume_mm3'] / 1000:.1f} cm³ ({source}{score}), "
        f"{timings['total']:.1f} s"
    )
    return CompletedFiles(record, message, warnings)


def _write_all(skull, results, output: Path, options: OutputOptions, gammas, timings, warnings, plan, input):
    """Every file of the call, through one transaction (they appear together at the end, or none);
    (written paths per γ, the montage or None, the run id)."""
    sweep = len(gammas) > 1
    written, montage = [], None
    with plan.transaction() as tx:
        for gamma, result in zip(gammas, results, strict=True):
            stl = Path(options.implant_stl) if options.implant_stl else None
            unc = Path(options.uncertainty) if options.uncertainty else None
            if sweep:
                stl = sweep_path(stl, gamma) if stl else None
                unc = sweep_path(unc, gamma) if unc else None
            out = sweep_path(output, gamma) if sweep else output
            written.append(_write_one(skull, result, out, options, stl, unc, timings, warnings, tx))
        if sweep:
            from SkullVAELib.evaluation.figures import plot_gamma_sweep, sweep_rows

            montage = _montage_path(output)
            rows = sweep_rows(gammas, [r.completed for r in results], [r.implant for r in results])
            plot_gamma_sweep(rows, tx.path(montage), title=Path(input).name, dpi=80)
    return written, montage, tx.run_id
