"""Issue 25 §4-§5: every number on the command line is checked; a bad one is one line, exit 2.

Each case is refused by argparse before any file is read (the model, input and data paths do not
exist), so the message must name the flag, not a missing file. Also: argparse's own errors
(unknown flags, missing values) are one line instead of a usage dump, and ``--threads`` is capped
at the CPU count.
"""

from __future__ import annotations

import os

import pytest

from SkullVAELib.cli import main
from SkullVAELib.cli.common import threads_arg

COMPLETE = ["complete", "--input", "missing.nrrd", "--output", "out.seg.nrrd"]
TRAIN = ["train", "--data", "missing", "--out", "model"]
PHANTOMS = ["phantoms", "--n", "1", "--out", "phantoms"]

CASES = [
    (COMPLETE + ["--gamma", "inf"], "--gamma"),
    (COMPLETE + ["--gamma=-inf"], "--gamma"),
    (COMPLETE + ["--gamma", "0,nan"], "--gamma"),
    (COMPLETE + ["--max-voxels", "0"], "--max-voxels"),
    (COMPLETE + ["--max-voxels", "-5"], "--max-voxels"),
    (COMPLETE + ["--max-voxels", "nan"], "--max-voxels"),
    (COMPLETE + ["--max-voxels", "1e400"], "--max-voxels"),
    (COMPLETE + ["--max-memory-gb", "nan"], "--max-memory-gb"),
    (COMPLETE + ["--max-memory-gb", "0"], "--max-memory-gb"),
    (COMPLETE + ["--max-memory-gb", "inf"], "--max-memory-gb"),
    (COMPLETE + ["--max-distance", "nan"], "--max-distance"),
    (COMPLETE + ["--max-distance", "-1"], "--max-distance"),
    (COMPLETE + ["--min-island", "inf"], "--min-island"),
    (COMPLETE + ["--threshold", "nan"], "--threshold"),
    (COMPLETE + ["--hu-threshold", "inf"], "--hu-threshold"),
    (COMPLETE + ["--hu-threshold", "nan"], "--hu-threshold"),
    (COMPLETE + ["--seed", "-1"], "--seed"),
    (COMPLETE + ["--seed", str(2**64)], "--seed"),
    (COMPLETE + ["--samples", "0"], "--samples"),
    (COMPLETE + ["--threads", "-2"], "--threads"),
    (COMPLETE + ["--fit-steps", "-1"], "--fit-steps"),
    (TRAIN + ["--lr", "nan"], "--lr"),
    (TRAIN + ["--lr", "0"], "--lr"),
    (["train-refiner", "--grids", "g.npz", "--out", "r", "--ema", "1"], "--ema"),
    (["train-residual", "--data", "d", "--out", "r", "--ema", "nan"], "--ema"),
    (["train-refiner", "--grids", "g.npz", "--out", "r", "--weight-decay", "-1"], "--weight-decay"),
    (["train-residual", "--data", "d", "--out", "r", "--weight-decay", "nan"], "--weight-decay"),
    (TRAIN + ["--beta", "nan"], "--beta"),
    (TRAIN + ["--beta", "inf"], "--beta"),
    (TRAIN + ["--latent", "0"], "--latent"),
    (TRAIN + ["--batch", "0"], "--batch"),
    (TRAIN + ["--epochs", "-1"], "--epochs"),
    (TRAIN + ["--seed", "-3"], "--seed"),
    (TRAIN + ["--checkpoint-minutes", "nan"], "--checkpoint-minutes"),
    (TRAIN + ["--recon-scale", "inf"], "--recon-scale"),
    (TRAIN + ["--augment-spacing", "1,nan,1"], "--augment-spacing"),
    (PHANTOMS + ["--spacing", "0"], "--spacing"),
    (PHANTOMS + ["--spacing", "nan"], "--spacing"),
    (PHANTOMS + ["--spacing", "-1"], "--spacing"),
    (PHANTOMS + ["--seed", str(2**64)], "--seed"),
    (["phantoms", "--n", "0", "--out", "p"], "--n"),
    (["make-defects", "--complete", "c", "--kind", "cranial", "--out", "o", "--seed", "-1"], "--seed"),
    (["demo", "--threads", "-1"], "--threads"),
    (["cache", "--data", "d", "--workers", "0"], "--workers"),
    (["build-atlas", "--data", "d", "--out", "a", "--spacing", "nan"], "--spacing"),
]


def _refused(argv: list[str], capsys) -> str:
    try:
        code = main(argv)  # errors found by the verb itself
    except SystemExit as stop:  # errors found by argparse
        code = stop.code
    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err  # one line, not argparse's usage dump
    assert captured.out == ""
    return lines[0]


@pytest.mark.parametrize(("argv", "flag"), CASES, ids=[" ".join(a[0:1] + a[-2:]) for a, _ in CASES])
def test_a_bad_number_is_one_line_naming_its_flag(argv, flag, capsys, tmp_path, monkeypatch, default_limits):
    monkeypatch.chdir(tmp_path)
    line = _refused(argv, capsys)
    assert line.startswith(f"skullvae {argv[0]}: error:") and flag in line, line
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_argparse_errors_are_one_line_too(capsys):
    line = _refused(["complete", "--input", "a.nrrd", "--output", "b.seg.nrrd", "--no-such-flag"], capsys)
    assert line.startswith("skullvae") and ": error:" in line and "--no-such-flag" in line
    line = _refused(["models", "pack", "folder"], capsys)  # --out missing
    assert "--out" in line


def test_threads_are_capped_at_the_cpu_count():
    cpus = os.cpu_count() or 1
    assert threads_arg("100000") == cpus
    assert threads_arg("1") == 1


def test_a_huge_id_range_is_refused_before_it_is_expanded(capsys, tmp_path, monkeypatch):
    """``0-99999999`` took over 2.3 GB before failing; it is now refused from its two bounds."""
    import tracemalloc

    from SkullVAELib.core.errors import SkullVAEError
    from SkullVAELib.data.case_ids import parse_id_spec

    tracemalloc.start()
    with pytest.raises(SkullVAEError, match="holds over 100,000 case ids"):
        parse_id_spec("000-063,0-99999999")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20
    monkeypatch.chdir(tmp_path)
    line = _refused(TRAIN + ["--train-ids", "0-99999999"], capsys)
    assert "0-99999999" in line
    assert parse_id_spec("000-002") == ["000", "001", "002"]
