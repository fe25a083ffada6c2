"""Worker processes for work split by case (a batch of completions, the residual's sample pools).

One start method per platform and one worker set-up, so every pool of workers behaves the same:
the parent alone answers Ctrl-C (leaving its ``with Pool`` block terminates the workers: on
Ctrl-C and SIGTERM too), each worker computes on its share of the cores, and keeps its freed
memory for the next case (a worker ends with its pool).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys

from SkullVAELib.core.memory import keep_freed_memory


def process_context():
    """fork on Linux (the imports are inherited, workers start in milliseconds), spawn elsewhere
    (fork is unsafe on macOS)."""
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def threads_per_worker(jobs: int, threads: int | None = None) -> int:
    """``threads`` or the CPU cores shared out among ``jobs`` workers (at least 1)."""
    return threads or max(1, (os.cpu_count() or 1) // max(jobs, 1))


def start_worker(threads: int) -> None:
    """A worker's first call: SIGINT ignored (the parent stops the pool), SIGTERM ends it, freed
    memory kept, ``threads`` CPU threads for torch, ITK and BLAS."""
    from SkullVAELib.workflows.complete import set_threads

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    keep_freed_memory()  # spawned workers do not inherit the parent's setting
    set_threads(threads)
