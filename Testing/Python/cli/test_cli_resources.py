"""Issue 25 §6: running out of memory or disk is one line, exit 2, never a traceback.

Real child processes under real limits: ``complete`` under a tight ``ulimit -v`` (a library cannot
even be mapped: an ImportError deep in SimpleITK, torch or VTK) and ``build-atlas`` under a
file-size limit (ITK's NRRD writer fails in C++).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from SkullVAELib.cli import native_failure
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.io.image import write_mask

resource = pytest.importorskip("resource")

UNDER_LIMIT = """
import resource, sys
which, limit = getattr(resource, sys.argv[1]), int(sys.argv[2])
resource.setrlimit(which, (limit, limit))
from SkullVAELib.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _under(which: str, limit: int, *argv) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", UNDER_LIMIT, which, str(limit), *map(str, argv), "--progress", "none"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def skulls(tmp_path_factory):
    folder = tmp_path_factory.mktemp("skulls")
    for k in range(2):
        write_mask(make_phantom(k, shape=(96, 96, 72), spacing=None), folder / "complete_skull" / f"00{k}.nrrd")
    defective, _ = cranial_defect(make_phantom(5, shape=(96, 96, 72), spacing=None), seed=2)
    write_mask(defective, folder / "defective.nrrd")
    return folder


@pytest.mark.parametrize("megabytes", [300, 800, 1200])
def test_complete_under_a_tight_ulimit_v_is_one_line(skulls, tmp_path, megabytes):
    out = tmp_path / "r.seg.nrrd"
    done = _under("RLIMIT_AS", megabytes * 2**20, "complete", "--input", skulls / "defective.nrrd", "--output", out)
    if done.returncode == 0:
        pytest.skip(f"completes within {megabytes} MB of address space here")
    assert "out of memory" in _one_line(done) and not out.exists()


def test_build_atlas_under_a_file_size_limit_is_one_line(skulls, tmp_path):
    out = tmp_path / "atlas"
    done = _under("RLIMIT_FSIZE", 20_000, "build-atlas", "--data", skulls, "--out", out)
    line = _one_line(done)
    assert line.startswith("skullvae build-atlas: error:") and "cannot write" in line
    assert not out.exists()


def test_only_resource_failures_become_one_line():
    assert "out of memory" in native_failure(ImportError("libtorch_cpu.so: failed to map segment from shared object"))
    assert "cannot write" in native_failure(RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 9"))
    assert native_failure(OSError(28, "No space left on device")).startswith("cannot write")
    assert native_failure(RuntimeError("shape mismatch in a matmul")) is None  # a bug keeps its traceback
    assert native_failure(ImportError("No module named 'foo'")) is None


@pytest.mark.parametrize("limit", [["--max-voxels", "100000"], ["--max-memory-gb", "0.005"]])
def test_a_phantom_grid_over_the_limits_is_refused_before_it_is_made(tmp_path, capsys, limit):
    """`phantoms --shape` is a volume like any read one: over --max-voxels or --max-memory-gb it is one
    line, exit 2, before anything is allocated or written (not an out-of-memory kill halfway)."""
    from SkullVAELib.cli import main

    out = tmp_path / "data"
    argv = ["phantoms", "--n", "1", "--out", str(out), "--shape", "64,64,64", "--progress", "none", *limit]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "phantom grid" in err and "limit" in err and len(err.splitlines()) == 1
    assert not out.exists()
