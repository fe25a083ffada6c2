"""Many defective skulls through one :class:`~SkullVAELib.pipeline.completer.Completer` (models load
once): ``skullvae complete --input a.nrrd b.nrrd ... --output OUT/`` or ``--input FOLDER``."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from SkullVAELib.core.config import MESH_EXTENSIONS
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.memory import keep_freed_memory
from SkullVAELib.core.progress import ProgressCallback, no_progress
from SkullVAELib.data.layout import split_case_name
from SkullVAELib.io.outputs import file_identity
from SkullVAELib.io.skull_input import SEGMENTATION_SUFFIX, SkullReading, is_mesh_file, is_segmentation_file
from SkullVAELib.pipeline.settings import CompletionSettings
from SkullVAELib.workflows.batch_pool import (
    CaseArguments,
    CaseOutcome,
    CaseTask,
    batch_jobs,
    case_estimate,
    complete_case,
    complete_in_workers,
)
from SkullVAELib.workflows.complete import (
    CompletedFiles,
    OutputOptions,
    complete_files,
    planned_outputs,
    set_threads,
    warm_completer,
)


def batch_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The inputs: the given files and DICOM series' folders, or what one given folder holds (:func:`folder_inputs`);
    two inputs of one case name (``case.nrrd``, ``case.nii.gz``: their results would be one file) are refused."""
    paths = [Path(p) for p in inputs]
    if len(paths) == 1 and paths[0].is_dir():
        paths = folder_inputs(paths[0])
    paths = _one_file_a_series(paths)
    seen: dict[str, Path] = {}
    for path in paths:  # the results are named by case: one name, one result
        other = seen.setdefault(case_stem(path), path)
        if other is not path:
            raise SkullVAEError(
                f"{other} and {path} have the same case name {case_stem(path)!r}; their results would collide"
            )
    return paths


def folder_inputs(folder: Path) -> list[Path]:
    """The inputs a folder holds: its image and surface files (sorted); else the folder itself where it holds one
    DICOM series (GDCM reads its files' headers); else its subfolders that hold DICOM series (sorted), one case each."""
    from SkullVAELib.io.dicom import is_dicom_folder

    found = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and (split_case_name(p.name) or is_mesh_file(p))
    )  # a hidden file (macOS's "._x.stl") is no case
    if found:
        return found
    if is_dicom_folder(folder):
        return [folder]
    found = sorted(p for p in folder.iterdir() if p.is_dir() and is_dicom_folder(p))
    if not found:
        raise SkullVAEError(
            f"no image files (.nrrd, .nii.gz, .nii, .mha, .mhd), no surfaces ({', '.join(MESH_EXTENSIONS)}) and no "
            "DICOM series in this folder or its subfolders",
            folder,
        )
    return found


def _one_file_a_series(paths: list[Path]) -> list[Path]:
    """``paths`` with the DICOM files of a series already named left out (``--input "Patient 7"/*.dcm``: each file
    reads its whole series; the first one of each stays)."""
    from SkullVAELib.io.dicom import dicom_file_series

    series, kept = set(), []
    for path in paths:
        found = None if path.is_dir() or is_segmentation_file(path) else dicom_file_series(path)
        if found is None or found not in series:
            kept.append(path)
        if found is not None:
            series.add(found)
    return kept


def case_stem(path: Path) -> str:
    """``case_001.nii.gz`` -> ``case_001``; a Slicer segmentation ``case_001.seg.nrrd`` -> ``case_001``; a DICOM
    series' folder ``Patient 7`` -> ``Patient 7``."""
    if path.is_dir():
        return path.name
    if is_segmentation_file(path) and len(path.name) > len(SEGMENTATION_SUFFIX):
        return path.name[: -len(SEGMENTATION_SUFFIX)]
    split = split_case_name(path.name)
    return split[0] if split else path.name.split(".")[0]


def complete_batch(
    settings: CompletionSettings,
    inputs: Sequence[Path],
    output: Path,
    gammas: Sequence[float] = (1.0,),
    *,
    options: OutputOptions | None = None,
    reading: SkullReading | None = None,
    threads: int | None = None,
    jobs: int | None = 1,
    owns_process: bool = False,
    into_folder: bool = False,
    progress: ProgressCallback | None = None,
) -> CompletedFiles:
    """One input: :func:`complete_files`. Several: ``output`` is a folder that gets
    ``<case>.seg.nrrd`` per input (``options.implant_stl`` / ``uncertainty``: folders too).

    ``jobs``: cases completed at once, each in a worker process (:mod:`.batch_pool`); None: as many
    as the CPU cores and the memory limit allow; 1 (the library's default): one after the other in
    this process (the safe choice inside an application such as Slicer). ``owns_process``: this
    process ends with the work (the CLI), so freed memory is kept for reuse (:mod:`core.memory`).
    ``into_folder``: ``output`` is a folder even for one input (the inputs are a folder's files).
    """
    if owns_process:
        keep_freed_memory()
    options = options or OutputOptions()
    if len(inputs) == 1 and not into_folder and not output.is_dir():
        return complete_files(
            settings,
            inputs[0],
            output,
            gammas,
            options=options,
            reading=reading,
            threads=threads,
            progress=progress,
        )
    if output.exists() and not output.is_dir():
        raise SkullVAEError("a batch (several inputs, or a folder's) writes into a folder; --output is a file", output)
    start = time.perf_counter()
    progress = progress or no_progress
    tasks = [_case_task(n, path, output, options) for n, path in enumerate(inputs)]
    check_batch_outputs(tasks, gammas)
    reading = reading or SkullReading()
    arguments = CaseArguments(settings, tuple(gammas), reading)
    jobs = batch_jobs(jobs, inputs, case_estimate(settings, reading))
    if jobs > 1:
        outcomes = complete_in_workers(arguments, tasks, jobs, threads, progress)
    else:
        outcomes = _complete_in_turn(arguments, tasks, threads, progress)
    seconds = time.perf_counter() - start
    failed = [f"{tasks[o.index].input.name}: {o.error}" for o in outcomes if o.error is not None]
    done = [o for o in outcomes if o.error is None]
    warnings = [f"{tasks[o.index].input.name}: {w}" for o in done for w in o.warnings]
    records = [o.record for o in done]
    results = [r for record in records for r in record["results"]]
    record = {"results": results, "cases": records, "timings": {"total": round(seconds, 3)}, "jobs": jobs}
    if failed:
        summary = f"{len(failed)} of {len(inputs)} inputs failed, {len(inputs) - len(failed)} completed into {output}"
        raise SkullVAEError(f"{summary}: " + " | ".join(failed))
    message = f"{len(inputs)} skulls completed into {output} in {seconds:.1f} s ({seconds / len(inputs):.1f} s each)"
    return CompletedFiles(record, message, warnings)


def _case_task(index: int, path: Path, output: Path, options: OutputOptions) -> CaseTask:
    """The batch's files for one input: ``output/<case>.seg.nrrd`` and the other outputs' folders."""
    stem = case_stem(path)
    case_options = replace(
        options,
        implant_stl=options.implant_stl / f"{stem}.stl" if options.implant_stl else None,
        uncertainty=options.uncertainty / f"{stem}.nrrd" if options.uncertainty else None,
    )
    return CaseTask(index, path, output / f"{stem}{SEGMENTATION_SUFFIX}", case_options)


def check_batch_outputs(tasks: Sequence[CaseTask], gammas: Sequence[float]) -> None:
    """Before any work: SkullVAEError naming the files when two cases of the batch would write the same
    file (γ-sweep results and montages included), or a case would write over any input of the batch
    (by its path or a link to it; the batch has no --overwrite: an input is never replaced)."""
    inputs = {task.input.resolve(): task.input for task in tasks}
    by_identity = {identity: task.input for task in tasks if (identity := file_identity(task.input)) is not None}
    writers: dict[Path, CaseTask] = {}
    for task in tasks:
        for path, option, _ in planned_outputs(task.output, gammas, task.options):
            resolved = path.resolve()
            clash = inputs.get(resolved) or by_identity.get(file_identity(path))
            if clash is not None:
                raise SkullVAEError(
                    f"{option} of {task.input.name} would write over the input {clash}; refusing to overwrite it", path
                )
            other = writers.setdefault(resolved, task)
            if other is not task:
                raise SkullVAEError(f"{other.input} and {task.input} would both write {path}; rename one of them")


def _complete_in_turn(
    arguments: CaseArguments, tasks: Sequence[CaseTask], threads: int | None, progress: ProgressCallback
) -> list[CaseOutcome]:
    """The cases one after the other in this process, with one warm Completer."""
    set_threads(threads)
    completer = warm_completer(arguments.settings)
    outcomes = []
    for task in tasks:

        def case_progress(stage, fraction, message="", task=task):
            progress(stage, (task.index + fraction) / len(tasks), f"{task.input.name}: {message}")

        outcomes.append(complete_case(task, arguments, completer, case_progress))
    return outcomes
