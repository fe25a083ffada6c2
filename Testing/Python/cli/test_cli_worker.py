"""`skullvae worker`: complete requests one per stdin line in one process; errors never end it."""

from __future__ import annotations

import json
import subprocess
import sys

from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.io.image import write_mask
from SkullVAELib.io.segfile import read_segmentation


def test_the_worker_completes_request_after_request_and_survives_bad_ones(tmp_path):
    defective, _ = cranial_defect(make_phantom(1, (80, 80, 60), (2.6, 2.6, 2.6)), 1, style="skullbreak")
    write_mask(defective, tmp_path / "d.nrrd")
    requests = [
        ["--input", str(tmp_path / "d.nrrd"), "--output", str(tmp_path / "a.seg.nrrd"), "--progress", "json"],
        "not json",
        ["--input", str(tmp_path / "missing.nrrd"), "--output", str(tmp_path / "b.seg.nrrd"), "--progress", "json"],
        ["--input", str(tmp_path / "d.nrrd"), "--output", str(tmp_path / "c.seg.nrrd"), "--progress", "json"],
    ]
    stdin = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests)
    run = subprocess.run(
        [sys.executable, "-m", "SkullVAELib", "worker"], input=stdin, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [x["code"] for x in lines if x["stage"] == "exit"] == [0, 2, 2, 0]
    done = [x for x in lines if x["stage"] == "done"]
    assert len(done) == 2 and all(d["result"]["implant_source"] == "rimfit" for d in done)
    errors = run.stderr.strip().splitlines()
    assert len(errors) == 2 and "JSON list" in errors[0] and "missing.nrrd" in errors[1]
    _, first = read_segmentation(tmp_path / "a.seg.nrrd")
    _, again = read_segmentation(tmp_path / "c.seg.nrrd")
    assert (first["Implant"] == again["Implant"]).all() and first["Implant"].any()
    assert not (tmp_path / "b.seg.nrrd").exists()


def test_a_request_s_limits_and_failures_stay_with_that_request(tmp_path, monkeypatch, capsys):
    import io
    import os

    import SkullVAELib.cli.complete as complete_verb
    from SkullVAELib.cli import main

    monkeypatch.delenv("SKULLVAE_MAX_VOXELS", raising=False)
    seen = []

    def fake_run(args):
        seen.append(os.environ.get("SKULLVAE_MAX_VOXELS"))
        if args.input == ["boom"]:
            raise ValueError("a bug\nover two lines")
        return 0

    monkeypatch.setattr(complete_verb, "run", fake_run)
    requests = [["--input", name, "--output", str(tmp_path / "o.seg.nrrd")] for name in ("a", "boom", "b")]
    requests[0] += ["--max-voxels", "5"]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in requests)))
    assert main(["worker"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["code"] for line in out.splitlines()] == [0, 1, 0]
    assert seen == ["5.0", None, None] and "SKULLVAE_MAX_VOXELS" not in os.environ
    assert err.strip().splitlines() == ["skullvae complete: error: internal error (ValueError): a bug over two lines"]
