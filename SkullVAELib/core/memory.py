"""Keep freed memory for reuse in a process that completes scans (the ``skullvae complete`` CLI and
its batch workers).

A SkullFix case allocates and frees about half a gigabyte in whole-scan arrays (masks of
512×512×224 voxels, 58 MB each, their temporaries, SimpleITK's buffers). glibc serves every
allocation above 32 MB with a fresh ``mmap`` and returns it with ``munmap``, so each such array
is zero-filled page by page again: ≈ 140,000 page faults and ≈ 1 s of kernel time per case on
the 2-core VM (docs/BENCHMARKS.md). ``mallopt`` (glibc's documented tuning, the same as the
``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables, which only take effect at
a process's start) serves them from the heap instead and keeps what is freed for the next array.
No Python library exposes ``mallopt``, hence ctypes. The peak memory stays the same (measured);
what the process frees is returned to the system when it exits, not before, so this is for
processes that end after their work, never for Slicer's own process.

``SKULLVAE_KEEP_FREED_MEMORY=0`` leaves the allocator alone. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV_SWITCH = "SKULLVAE_KEEP_FREED_MEMORY"
# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
TRIM_THRESHOLD_BYTES = 2**31 - 1  # (mallopt takes an int) never give the heap's top back in practice
TOP_PAD_BYTES = 1 << 26  # grow the heap 64 MB at a time


def keep_freed_memory() -> bool:
    """Serve large arrays from the heap and keep freed memory for reuse (glibc only); True when done."""
    if os.environ.get(ENV_SWITCH, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES), (M_TOP_PAD, TOP_PAD_BYTES))
    return all(mallopt(param, value) == 1 for param, value in settings)
