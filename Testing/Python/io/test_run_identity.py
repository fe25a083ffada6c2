"""Issue 25 §2-§3: one run's files are never paired with another's, a data set is never mixed.

- The output transaction has a ``run_id`` and writes ``<output>.run.json``; ``check_run_identity``
  refuses a segmentation and an STL of two runs.
- A process killed (SIGKILL, at a real ``os.replace``) anywhere in the commit leaves files of one
  run only: the earlier files are moved aside before the first new one is renamed in.
- ``make-defects`` killed at its 4th rename never leaves a seed-2 defective skull beside a seed-1
  implant; two ``phantoms`` runs into one new folder never both succeed.
- The atomic writer never follows a symbolic link planted at its temporary name (O_EXCL) and
  refuses to replace a device node or FIFO.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SkullVAELib.core.atomic import atomic_write_bytes, is_temporary_name
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.io import outputs
from SkullVAELib.io.image import write_mask
from SkullVAELib.io.outputs import OutputPlan
from SkullVAELib.io.runs import check_run_identity, manifest_path, read_manifest

pytestmark = pytest.mark.usefixtures("default_limits")


def _run(folder: Path, label: str) -> str:
    """One 'complete'-like run: a segmentation, an STL and their run manifest; returns the run id."""
    plan = OutputPlan()
    seg, stl = plan.add(folder / "r.seg.nrrd", "--output"), plan.add(folder / "i.stl", "--implant-stl")
    plan.add_run_manifest(seg)
    with plan.transaction() as tx:
        tx.path(seg).write_text(f"segmentation of {label}")
        tx.path(stl).write_text(f"stl of {label}")
    return tx.run_id


def test_a_run_manifest_names_the_files_of_one_run(tmp_path):
    run_id = _run(tmp_path, "A")
    assert check_run_identity(tmp_path / "r.seg.nrrd", tmp_path / "i.stl") == run_id
    doc = read_manifest(tmp_path / "r.seg.nrrd")
    assert doc["run_id"] == run_id and sorted(e["name"] for e in doc["files"]) == ["i.stl", "r.seg.nrrd"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.stl", "r.seg.nrrd", "r.seg.nrrd.run.json"]


def test_a_pair_from_two_runs_is_refused(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    _run(tmp_path / "a", "A")
    _run(tmp_path / "b", "B")
    shutil.copy(tmp_path / "b" / "i.stl", tmp_path / "a" / "i.stl")
    with pytest.raises(SkullVAEError, match="refusing to pair them") as info:
        check_run_identity(tmp_path / "a" / "r.seg.nrrd", tmp_path / "a" / "i.stl")
    assert "\n" not in str(info.value) and "i.stl" in str(info.value)


def test_a_file_without_a_manifest_is_refused(tmp_path):
    (tmp_path / "r.seg.nrrd").write_text("from an unknown run")
    with pytest.raises(SkullVAEError, match="no run manifest"):
        check_run_identity(tmp_path / "r.seg.nrrd")


def test_record_run_inside_a_transaction(tmp_path):
    plan = OutputPlan()
    seg = plan.add(tmp_path / "r.seg.nrrd", "--output")
    with plan.transaction() as tx:
        tx.path(seg).write_text("segmentation")
        assert tx.record_run(seg) == manifest_path(seg)
    assert check_run_identity(seg) == tx.run_id


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from SkullVAELib.io.outputs import OutputPlan
folder, label, kill_at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
real, calls = os.replace, []
def replace(a, b):
    calls.append(b)
    if len(calls) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # as strace -e inject=rename:signal=KILL:when=N does
    real(a, b)
os.replace = replace
plan = OutputPlan()
seg, stl = plan.add(folder / "r.seg.nrrd", "--output"), plan.add(folder / "i.stl", "--implant-stl")
plan.add_run_manifest(seg)
with plan.transaction() as tx:
    tx.path(seg).write_text(f"segmentation of {label}")
    tx.path(stl).write_text(f"stl of {label}")
"""


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5, 6])
def test_a_run_killed_at_any_rename_never_pairs_its_files_with_an_earlier_runs(tmp_path, kill_at):
    _run(tmp_path, "A")
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path), "B", str(kill_at)], timeout=120)
    assert done.returncode == -9  # killed (there are 6 renames: 3 old files aside, 3 new ones in)
    seg, stl = tmp_path / "r.seg.nrrd", tmp_path / "i.stl"
    labels = {p.read_text().split()[-1] for p in (seg, stl) if p.exists()}
    assert len(labels) <= 1, f"killed at rename {kill_at}: files of runs {labels} side by side"
    if seg.exists() and stl.exists() and manifest_path(seg).exists():
        check_run_identity(seg, stl)  # a complete pair is one run's
    else:
        with pytest.raises(SkullVAEError):
            check_run_identity(seg, stl)


# --- make-defects killed at its 4th rename ---------------------------------------------------------
KILLED_CLI = """
import os, signal, sys
real, calls = os.replace, []
out, kill_at = sys.argv[1], int(sys.argv[2])
def replace(a, b):
    if str(b).startswith(out):
        calls.append(b)
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    real(a, b)
os.replace = replace
from SkullVAELib.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def skulls(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("complete")
    for k in range(2):
        write_mask(make_phantom(k, shape=(64, 64, 48), spacing=(3.2, 3.2, 3.2)), folder / f"00{k}.nrrd")
    return folder


def _voxels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _make_defects(skulls: Path, out: Path, seed: int, kill_at: int = 0) -> int:
    argv = ["make-defects", "--complete", str(skulls), "--kind", "cranial", "--out", str(out), "--seed", str(seed)]
    argv += ["--progress", "none", "--overwrite"]
    return subprocess.run([sys.executable, "-c", KILLED_CLI, str(out), str(kill_at), *argv], timeout=300).returncode


@pytest.mark.parametrize("kill_at", [2, 4, 6])
def test_make_defects_killed_mid_commit_never_mixes_seeds(skulls, tmp_path, kill_at):
    for seed in (1, 2):
        assert _make_defects(skulls, tmp_path / f"seed{seed}", seed) == 0
    out = tmp_path / "out"
    shutil.copytree(tmp_path / "seed1", out)
    assert _make_defects(skulls, out, 2, kill_at) == -9
    for name in ("000.nrrd", "001.nrrd"):
        pair = [out / "defective_skull" / name, out / "implant" / name]
        if not all(p.exists() for p in pair):
            continue  # an incomplete case is visible; a mixed one would not be
        seeds = [
            next(s for s in (1, 2) if np.array_equal(_voxels(p), _voxels(tmp_path / f"seed{s}" / p.parent.name / name)))
            for p in pair
        ]
        assert seeds[0] == seeds[1], f"killed at rename {kill_at}: {name} has a seed-{seeds[0]} defective skull " \
            f"beside a seed-{seeds[1]} implant"  # fmt: skip


# --- two phantoms runs into one new folder --------------------------------------------------------
def test_two_phantom_runs_into_one_new_folder_never_both_succeed(tmp_path, monkeypatch):
    from SkullVAELib.workflows.data import make_phantom_set

    barrier = threading.Barrier(2, timeout=120)
    commit = outputs.Transaction.commit

    def commit_together(self):  # both runs have planned and written everything: now they race
        barrier.wait()
        return commit(self)

    monkeypatch.setattr(outputs.Transaction, "commit", commit_together)
    out, results = tmp_path / "cohort", {}

    def run(seed):
        try:
            results[seed] = make_phantom_set(2, out, seed, shape=(48, 48, 32))
        except SkullVAEError as exc:
            results[seed] = exc

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    errors = [r for r in results.values() if isinstance(r, SkullVAEError)]
    assert len(results) == 2 and len(errors) == 1, results
    assert "already exists" in str(errors[0]) and "--overwrite" in str(errors[0])
    winner = next(seed for seed, r in results.items() if not isinstance(r, SkullVAEError))
    for k, name in enumerate(("phantom_000.nrrd", "phantom_001.nrrd")):
        expected = make_phantom(_seeds(2, winner)[k], (48, 48, 32), None).mask
        assert np.array_equal(_voxels(out / "complete_skull" / name).transpose(2, 1, 0) != 0, expected)
    assert not any(is_temporary_name(p.name) for p in (out / "complete_skull").iterdir())


def _seeds(n: int, seed: int) -> list[int]:
    from SkullVAELib.data.phantoms import phantom_seeds

    return list(phantom_seeds(n, seed))


# --- §3: the atomic writer ----------------------------------------------------------------------
def test_atomic_writer_never_follows_a_symlink_planted_at_its_temporary_name(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    final = tmp_path / "out.bin"
    (tmp_path / ".out.bin.aaaaaaaa.tmp.bin").symlink_to(victim)  # the name the writer will try first
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: iter(["aaaaaaaa", "bbbbbbbb"]))
    atomic_write_bytes(final, b"new")
    assert final.read_bytes() == b"new" and victim.read_text() == "precious"


def _special_file(path: Path) -> Path:
    if os.geteuid() == 0:  # root: a real character device, like /dev/null
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    else:
        os.mkfifo(path)
    return path


def test_atomic_writer_refuses_to_replace_a_device_or_fifo(tmp_path):
    node = _special_file(tmp_path / "node")
    with pytest.raises(SkullVAEError, match="device, FIFO or socket"):
        atomic_write_bytes(node, b"data")
    assert not stat.S_ISREG(os.lstat(node).st_mode)
    plan = OutputPlan()
    with pytest.raises(SkullVAEError, match="device, FIFO or socket"):
        plan.add(node, "--output")


# --- end to end: skullvae complete killed between its final renames -----------------------------------
def test_complete_killed_between_its_renames_never_pairs_two_runs(tmp_path):
    """Run A, then run B (another input) killed at each rename of its commit: the segmentation and the
    STL left behind are both A's, both B's, or one is missing; never B's segmentation beside A's STL."""
    import hashlib

    from SkullVAELib.data.defects import cranial_defect

    inputs = {}
    for label, seed in (("A", 5), ("B", 7)):
        defective, _ = cranial_defect(make_phantom(seed, shape=(96, 96, 72), spacing=None), seed=2)
        inputs[label] = tmp_path / f"{label}.nrrd"
        write_mask(defective, inputs[label])

    def complete(label: str, folder: Path, kill_at: int = 0) -> int:
        argv = ["complete", "--input", str(inputs[label]), "--output", str(folder / "r.seg.nrrd")]
        argv += ["--implant-stl", str(folder / "i.stl"), "--progress", "none"]
        command = [sys.executable, "-c", KILLED_CLI, str(folder), str(kill_at), *argv]
        return subprocess.run(command, capture_output=True, timeout=600).returncode

    def digest(path: Path) -> bytes:  # a segmentation's header differs run to run: its voxels do not
        data = _voxels(path).tobytes() if path.name.endswith(".nrrd") else path.read_bytes()
        return hashlib.sha256(data).digest()

    digests = {}
    for label in ("A", "B"):
        assert complete(label, tmp_path / f"ref{label}") == 0
        digests[label] = {n: digest(tmp_path / f"ref{label}" / n) for n in ("r.seg.nrrd", "i.stl")}
    assert digests["A"] != digests["B"]
    for kill_at in (1, 2, 3, 4):
        out = tmp_path / f"out{kill_at}"
        shutil.copytree(tmp_path / "refA", out)
        assert complete("B", out, kill_at) == -9
        labels = set()
        for name in ("r.seg.nrrd", "i.stl"):
            if (out / name).exists():
                labels.add(next(label for label in ("A", "B") if digests[label][name] == digest(out / name)))
        assert len(labels) <= 1, f"killed at rename {kill_at}: the files of runs {sorted(labels)} side by side"
