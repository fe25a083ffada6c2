"""The cases of a batch completed side by side, one worker process each (``skullvae complete --jobs``).

Most of one case's work (SciPy's morphology and labelling, the ray marcher's numpy, the writer's
gzip) runs on one core, so a batch in one process leaves the other cores idle. Workers are
processes, not threads: those stages hold Python's GIL, and the ray casting's bone list is cached
per process. Each worker builds its own :class:`~SkullVAELib.pipeline.completer.Completer` once
(on Linux the workers are forked after the imports, so they start in milliseconds) and completes
case after case with it; the parent hands out the cases and gathers what each wrote.

How many workers: at most the CPU cores and the inputs, and no more than the memory limit holds
(``--max-memory-gb``: every worker may hold one case's estimated peak, from the largest input's
header), so the memory is bounded before anything is allocated. Ctrl-C or SIGTERM in the parent
stops every worker (the pool is terminated); files are written under a temporary name and renamed,
so a stopped batch leaves whole results only.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.limits import WORK_BYTES_PER_VOXEL, current_limits
from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.io.skull_input import SkullReading
from SkullVAELib.pipeline.settings import CompletionSettings
from SkullVAELib.workflows.complete import OutputOptions, complete_files, warm_completer
from SkullVAELib.workflows.processes import process_context, start_worker, threads_per_worker


@dataclass(frozen=True)
class CaseTask:
    """One input of a batch: its position, its file, its segmentation and its other outputs."""

    index: int
    input: Path
    output: Path
    options: OutputOptions


@dataclass
class CaseOutcome:
    """What one case gave: its ``complete_files`` record and warnings, or the one-line error."""

    index: int
    record: dict | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class CaseArguments:
    """Everything a worker needs besides the task (sent once, at the worker's start)."""

    settings: CompletionSettings
    gammas: tuple[float, ...]
    reading: SkullReading


def case_memory_bytes(path: str | os.PathLike, reading: SkullReading | None = None) -> float:
    """Estimated peak bytes of completing ``path`` read as ``reading`` says (its header's voxels × (pixel + work
    bytes)); the header only (a NIfTI's voxels are verified by the worker that reads them, not here in turn)."""
    return _header_bytes((reading or SkullReading()).information(path, verify_voxels=False))


def _header_bytes(reader) -> float:
    """:func:`case_memory_bytes` of an input's checked header ``reader``."""
    from SkullVAELib.io.inputs import pixel_bytes

    return math.prod(reader.GetSize()) * (pixel_bytes(reader) + WORK_BYTES_PER_VOXEL)


def case_estimate(settings: CompletionSettings, reading: SkullReading | None = None) -> Callable[[Path], float]:
    """The per-case peak bytes of a batch under ``settings``: :func:`case_memory_bytes`, or where the atlas source may
    run (among the sources, and the model folder holds a set) the larger of that and the atlas implant's stages for
    the input's header (``implant.atlas.memory.atlas_case_bytes``). The atlas set is opened on the first call."""
    reading = reading or SkullReading()

    @functools.cache
    def atlas_parts():
        try:
            folder = settings.model_folder()
            if "atlas" not in settings.sources or not folder.has_atlas:
                return None
            return folder.atlas(), settings.atlas.config
        except SkullVAEError:  # a broken set: each case reports it; the input's own estimate still bounds the workers
            return None

    def estimate(path: Path) -> float:
        reader = reading.information(path, verify_voxels=False)  # the header once: a surface's is read from it
        own, parts = _header_bytes(reader), atlas_parts()
        if parts is None:
            return own
        from SkullVAELib.implant.atlas.memory import atlas_case_bytes

        atlases, config = parts
        size, spacing = reader.GetSize(), reader.GetSpacing()
        return max(own, atlas_case_bytes(size, spacing, atlases, config.n_atlases, config.deformable))

    return estimate


def _memory_or_zero(path: Path, estimate: Callable[[Path], float] = case_memory_bytes) -> float:
    """``estimate(path)``, 0 for an unreadable input (its case reports it; the others go on)."""
    try:
        return estimate(path)
    except SkullVAEError:
        return 0.0


def batch_jobs(
    requested: int | None, inputs: Sequence[Path], estimate: Callable[[Path], float] = case_memory_bytes
) -> int:
    """How many cases to complete at once: ``requested`` (None: as many as the CPU cores allow),
    at most one per input and at most what the memory limit holds for the largest input by ``estimate``
    (:func:`case_estimate`).

    Raises SkullVAEError (naming that input) when ``requested`` workers exceed the memory limit.
    """
    cores = os.cpu_count() or 1
    wanted = min(cores if requested is None else int(requested), len(inputs))
    if wanted <= 1:
        return 1
    sizes = {path: _memory_or_zero(path, estimate) for path in inputs}
    largest = max(sizes, key=sizes.get)
    if sizes[largest] <= 0:
        return wanted  # no input readable: each fails in its own case, with its own message
    limit = current_limits().max_memory_bytes
    fits = max(1, int(limit // sizes[largest]))
    if requested is not None and wanted > fits:
        raise SkullVAEError(
            f"--jobs {wanted} would hold {wanted} × {sizes[largest] / 1e9:.1f} GB at once, over the memory limit "
            f"of {limit / 1e9:.1f} GB; use --jobs {fits} or raise --max-memory-gb",
            largest,
        )
    return min(wanted, fits)


_WORKER: dict = {}


def _start_worker(arguments: CaseArguments, threads: int) -> None:
    """Worker start (:func:`.processes.start_worker`), then one Completer."""
    start_worker(threads)
    _WORKER["arguments"] = arguments
    _WORKER["completer"] = warm_completer(arguments.settings)


def complete_case(task: CaseTask, arguments: CaseArguments, completer=None, progress=None) -> CaseOutcome:
    """One case of a batch; a bad input, and any other failure of this case (running out of memory, an
    unforeseen error of a library on an odd file), becomes the outcome's one-line error: it never stops the
    others. Ctrl-C and SIGTERM (KeyboardInterrupt) still stop the batch."""
    try:
        done = complete_files(
            arguments.settings,
            task.input,
            task.output,
            arguments.gammas,
            options=task.options,
            reading=arguments.reading,
            progress=progress,
            completer=completer,
        )
    except SkullVAEError as exc:
        return CaseOutcome(task.index, error=exc.message)
    except MemoryError:
        return CaseOutcome(task.index, error="out of memory (lower --jobs, or give --max-memory-gb)")
    except Exception as exc:  # noqa: BLE001 - one case's unforeseen failure never stops the other cases
        first = (str(exc).strip().splitlines() or [""])[0]
        return CaseOutcome(task.index, error=f"unexpected {type(exc).__name__}: {first} (please report it)")
    return CaseOutcome(task.index, {"input": str(task.input), **done.record}, list(done.warnings))


def _worker_case(task: CaseTask) -> CaseOutcome:
    return complete_case(task, _WORKER["arguments"], _WORKER["completer"])


def largest_first(tasks: Sequence[CaseTask]) -> list[CaseTask]:
    """``tasks`` by decreasing input size (header voxels × pixel bytes; ties keep their order): the
    longest cases start first, so that the batch does not end with one worker on a large case
    while the others wait (longest-first scheduling). Unreadable inputs go last (they fail at once)."""
    return sorted(tasks, key=lambda task: -_memory_or_zero(task.input))


def complete_in_workers(
    arguments: CaseArguments,
    tasks: Sequence[CaseTask],
    jobs: int,
    threads: int | None,
    progress: ProgressCallback,
) -> list[CaseOutcome]:
    """The outcomes of ``tasks`` (in their order), completed by ``jobs`` worker processes with
    ``threads`` CPU threads each (None: the cores shared out)."""
    per_worker = threads_per_worker(jobs, threads)
    by_index = {task.index: task for task in tasks}
    outcomes: dict[int, CaseOutcome] = {}
    with process_context().Pool(jobs, initializer=_start_worker, initargs=(arguments, per_worker)) as pool:
        for n, outcome in enumerate(pool.imap_unordered(_worker_case, largest_first(tasks)), 1):
            outcomes[outcome.index] = outcome
            progress("complete", n / len(tasks), f"{by_index[outcome.index].input.name}: done")
    # leaving the block terminates the pool: on Ctrl-C / SIGTERM (KeyboardInterrupt) too
    return [outcomes[task.index] for task in tasks if task.index in outcomes]
