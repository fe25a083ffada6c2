"""`skullvae complete` with several inputs: one Completer, the same files as separate runs."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from SkullVAELib.cli import main
from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.io.image import write_mask
from SkullVAELib.io.segfile import read_segmentation


def _phantom_inputs(folder, seeds=(1, 2)):
    folder.mkdir()
    for seed in seeds:
        defective, _ = cranial_defect(make_phantom(seed, (80, 80, 60), (2.6, 2.6, 2.6)), seed, style="skullbreak")
        write_mask(defective, folder / f"case{seed}.nrrd")
    return folder


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_batch_writes_the_same_segmentations_as_separate_runs(tmp_path, capsys, jobs):
    """In turn in one process (--jobs 1) or side by side in worker processes (--jobs 2)."""
    inputs = _phantom_inputs(tmp_path / "in")
    argv = ["complete", "--input", str(inputs), "--output", str(tmp_path / "batch"), "--jobs", jobs]
    assert main([*argv, "--progress", "json"]) == 0
    done = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert "2 skulls completed" in done["message"] and done["result"]["jobs"] == int(jobs)
    assert [Path(c["input"]).name for c in done["result"]["cases"]] == ["case1.nrrd", "case2.nrrd"]
    for seed in (1, 2):
        single = tmp_path / f"single{seed}.seg.nrrd"
        argv = ["complete", "--input", str(inputs / f"case{seed}.nrrd"), "--output", str(single), "--progress", "none"]
        assert main(argv) == 0
        _, one = read_segmentation(single)
        _, many = read_segmentation(tmp_path / "batch" / f"case{seed}.seg.nrrd")
        assert set(one) == set(many) == {"Patient bone", "Implant"}
        assert all(np.array_equal(one[k], many[k]) for k in one)


def test_a_batch_into_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "a.nrrd").write_bytes(b"")
    (tmp_path / "out.seg.nrrd").write_bytes(b"x")
    argv = ["complete", "--input", str(tmp_path / "a.nrrd"), str(tmp_path / "a.nrrd"), "--output", str(tmp_path / "x")]
    assert main([*argv, "--progress", "none"]) == 2
    assert "same case name" in capsys.readouterr().err


def test_a_completion_names_its_run_and_a_mixed_pair_is_refused(tmp_path, capsys):
    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.io.runs import check_run_identity

    for seed, name in ((1, "a"), (2, "b")):  # two different skulls: two different implants
        defective, _ = cranial_defect(make_phantom(seed, (80, 80, 60), (2.6, 2.6, 2.6)), seed, style="skullbreak")
        write_mask(defective, tmp_path / f"{name}.nrrd")
        argv = ["complete", "--input", str(tmp_path / f"{name}.nrrd"), "--output", str(tmp_path / name / "r.seg.nrrd")]
        assert main([*argv, "--implant-stl", str(tmp_path / name / "i.stl"), "--progress", "json"]) == 0
        run_id = json.loads(capsys.readouterr().out.splitlines()[-1])["result"]["run_id"]
        assert check_run_identity(tmp_path / name / "r.seg.nrrd", tmp_path / name / "i.stl") == run_id
    with pytest.raises(SkullVAEError):
        check_run_identity(tmp_path / "a" / "r.seg.nrrd", tmp_path / "b" / "i.stl")


def test_one_bad_input_never_stops_the_batch(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    defective, _ = cranial_defect(make_phantom(1, (80, 80, 60), (2.6, 2.6, 2.6)), 1, style="skullbreak")
    write_mask(defective, inputs / "b_good.nrrd")
    (inputs / "a_broken.nrrd").write_bytes(b"NRRD0004\nnot really\n")
    assert main(["complete", "--input", str(inputs), "--output", str(tmp_path / "out"), "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of 2 inputs failed" in err[0] and "a_broken.nrrd" in err[0]
    assert (tmp_path / "out" / "b_good.seg.nrrd").is_file()  # the good one after the bad one was done


def test_an_unforeseen_failure_of_one_case_never_stops_the_batch(tmp_path, capsys, monkeypatch):
    """Not only a bad input (SkullVAEError): a library's own error on one case (a RuntimeError of SimpleITK,
    running out of memory) is that case's one-line error, and the other cases are completed."""
    import SkullVAELib.workflows.batch_pool as batch_pool

    inputs = _phantom_inputs(tmp_path / "in", seeds=(1, 2, 3))
    real = batch_pool.complete_files
    failures = {"case1": RuntimeError("itk::ERROR: odd file\nsecond line"), "case2": MemoryError()}

    def flaky(settings, input, *args, **kwargs):
        if Path(input).stem in failures:
            raise failures[Path(input).stem]
        return real(settings, input, *args, **kwargs)

    monkeypatch.setattr(batch_pool, "complete_files", flaky)
    argv = ["complete", "--input", str(inputs), "--output", str(tmp_path / "out"), "--progress", "none", "--jobs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 of 3 inputs failed" in err[0]
    assert "case1.nrrd: unexpected RuntimeError: itk::ERROR: odd file (please report it)" in err[0]
    assert "case2.nrrd: out of memory" in err[0]
    assert (tmp_path / "out" / "case3.seg.nrrd").is_file()


def test_workers_are_bounded_by_the_memory_limit(tmp_path, default_limits):
    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.core.limits import set_limits
    from SkullVAELib.workflows.batch_pool import batch_jobs, case_memory_bytes

    inputs = sorted(_phantom_inputs(tmp_path / "in", (1, 2, 3)).iterdir())
    per_case = case_memory_bytes(inputs[0])
    assert per_case == 80 * 80 * 60 * (1 + 16)  # uint8 voxels + the work bytes per voxel
    set_limits(max_memory_gb=2.5 * per_case / 1e9)
    assert batch_jobs(None, inputs) == min(2, multiprocessing.cpu_count(), 3)
    assert batch_jobs(2, inputs) == 2 and batch_jobs(1, inputs) == 1 and batch_jobs(5, inputs[:1]) == 1
    with pytest.raises(SkullVAEError, match="--jobs 3 would hold 3 ×.*use --jobs 2"):
        batch_jobs(3, inputs)


def test_a_stopped_batch_leaves_no_worker_running(tmp_path):
    """Ctrl-C or SIGTERM (KeyboardInterrupt) in the parent terminates every worker."""
    from SkullVAELib.pipeline.settings import CompletionSettings
    from SkullVAELib.workflows.complete_batch import complete_batch

    inputs = sorted(_phantom_inputs(tmp_path / "in", (1, 2, 3)).iterdir())

    def stop(stage, fraction, message=""):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        complete_batch(CompletionSettings(), inputs, tmp_path / "out", jobs=2, progress=stop)
    assert multiprocessing.active_children() == []
    finals = sorted((tmp_path / "out").glob("case*.seg.nrrd")) if (tmp_path / "out").exists() else []
    assert len(finals) < 3  # stopped after the first case came back
    for path in finals:  # whatever was renamed into place is whole
        assert set(read_segmentation(path)[1]) == {"Patient bone", "Implant"}


def test_workers_take_the_largest_cases_first(tmp_path):
    """Longest-first: the batch should not end on one large case; unreadable inputs go last."""
    from SkullVAELib.workflows.batch_pool import CaseTask, largest_first
    from SkullVAELib.workflows.complete import OutputOptions

    tmp_path.joinpath("in").mkdir()
    sizes = {"small": (20, 20, 10), "large": (40, 40, 30), "middle": (30, 30, 20)}
    for name, shape in sizes.items():
        write_mask(make_phantom(1, shape, (2.0, 2.0, 2.0)), tmp_path / "in" / f"{name}.nrrd")
    (tmp_path / "in" / "broken.nrrd").write_text("not an image")
    names = ["small", "broken", "large", "middle"]
    tasks = [
        CaseTask(n, tmp_path / "in" / f"{name}.nrrd", tmp_path / f"{name}.seg.nrrd", OutputOptions())
        for n, name in enumerate(names)
    ]
    assert [task.input.stem for task in largest_first(tasks)] == ["large", "middle", "small", "broken"]


def test_a_rim_fit_batch_never_imports_torch(tmp_path):
    """The batch's start-up (listing a folder, naming each case's output) stays off the training stack:
    torch's import alone cost about 1 s of every batch before the layout moved to `data.layout`."""
    import subprocess
    import sys

    inputs = _phantom_inputs(tmp_path / "in")
    script = (
        "import sys\n"
        "from SkullVAELib.cli import main\n"
        f"code = main(['complete', '--input', {str(inputs)!r}, '--output', {str(tmp_path / 'out')!r},"
        " '--jobs', '1', '--progress', 'none'])\n"
        "print(code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split()[-2:] == ["0", "False"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.seg.nrrd")) == ["case1.seg.nrrd", "case2.seg.nrrd"]


def _small_case(path: Path, seed: int = 1) -> Path:
    defective, _ = cranial_defect(make_phantom(seed, (48, 48, 40), (3.2, 3.2, 3.2)), seed)
    write_mask(defective, path)
    return path


def test_batch_results_that_would_collide_are_refused_before_any_work(tmp_path, capsys):
    """case.nrrd beside case.nii.gz (one result name), and x.nrrd beside x.seg.nrrd with --output the
    input folder (x.nrrd's result is the input x.seg.nrrd, itself the case x): one line naming the files, exit 2,
    nothing written."""
    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.pipeline.settings import CompletionSettings
    from SkullVAELib.workflows.complete_batch import complete_batch

    same = tmp_path / "same"
    same.mkdir()
    _small_case(same / "case.nrrd")
    _small_case(same / "case.nii.gz", 2)
    argv = ["complete", "--input", str(same), "--output", str(tmp_path / "out"), "--progress", "none"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case.nrrd" in err[0] and "case.nii.gz" in err[0] and "same case name" in err[0]
    assert not (tmp_path / "out").exists()
    here = tmp_path / "here"
    here.mkdir()
    _small_case(here / "x.nrrd")
    _small_case(here / "x.seg.nrrd", 2)
    before = (here / "x.seg.nrrd").read_bytes()
    for jobs in ("1", "2"):
        argv = ["complete", "--input", str(here), "--output", str(here), "--jobs", jobs, "--progress", "none"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "same case name 'x'" in err[0] and "x.nrrd" in err[0] and "x.seg.nrrd" in err[0], err
    assert (here / "x.seg.nrrd").read_bytes() == before
    from SkullVAELib.workflows.complete import OutputOptions
    from SkullVAELib.workflows.complete_batch import _case_task, check_batch_outputs

    maps_beside = OutputOptions(uncertainty=here)  # x.nrrd's uncertainty map would be here/x.nrrd, the input
    with pytest.raises(SkullVAEError, match="of x.nrrd would write over the input"):
        check_batch_outputs([_case_task(0, here / "x.nrrd", tmp_path / "out", maps_beside)], [1.0])
    assert sorted(p.name for p in here.iterdir()) == ["x.nrrd", "x.seg.nrrd"]
    elsewhere = [tmp_path / "a" / "case.nrrd", tmp_path / "b" / "case.nrrd"]  # the library, without batch_inputs
    for path in elsewhere:
        path.parent.mkdir()
        _small_case(path)
    with pytest.raises(SkullVAEError, match=r"a/case.nrrd and .*b/case.nrrd would both write .*case.seg.nrrd"):
        complete_batch(CompletionSettings(), elsewhere, tmp_path / "out2", jobs=1)
    assert not (tmp_path / "out2").exists()


def test_dotted_case_names_get_their_own_sweep_files(tmp_path, capsys):
    """a.v1.nrrd and a.v2.nrrd: each case's γ-sweep results and montage keep the whole case name (the
    montages were both a_gamma_sweep.png, the second written over the first)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    _small_case(inputs / "a.v1.nrrd")
    _small_case(inputs / "a.v2.nrrd", 2)
    argv = ["complete", "--input", str(inputs), "--output", str(tmp_path / "out"), "--gamma", "0.5,1"]
    assert main([*argv, "--jobs", "1", "--no-mirror", "--progress", "none"]) == 0, capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.endswith(".run.json"))
    assert names == [
        f"a.{v}{suffix}" for v in ("v1", "v2") for suffix in ("_g0.50.seg.nrrd", "_g1.00.seg.nrrd", "_gamma_sweep.png")
    ]
