"""A batch of cases in one `skullvae complete` call against one process per case (issue 26).

Usage::

    .venv/bin/python benchmarks/batch_speed.py --cases 000-019 --jobs 1 2 --reps 1

For each repetition, in turn: **separate** = one `skullvae complete --input CASE` process per case
(default settings, one after the other, as a shell loop would run them); **batch --jobs N** = one
`skullvae complete --input CASE... --output FOLDER --jobs N` call. Wall seconds from outside (the
whole process, start-up included) and CPU seconds of the finished children (``getrusage``); the
batch's segmentations are compared voxel for voxel with the separate runs'. Needs SkullFix
(``defective_skull/``). Replaces the section ``bench:batch_speed`` of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, SKULLFIX, Section, table  # noqa: E402

SKULLVAE = [sys.executable, "-m", "SkullVAELib"]


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the finished child) of one command; it must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def separate(inputs: list[Path], out: Path) -> tuple[float, float]:
    wall = cpu = 0.0
    for path in inputs:
        w, c = timed([*SKULLVAE, "complete", "--input", str(path), "--output", str(out / f"{path.stem}.seg.nrrd"),
                      "--progress", "none"])  # fmt: skip
        wall, cpu = wall + w, cpu + c
    return wall, cpu


def batch(inputs: list[Path], out: Path, jobs: int) -> tuple[float, float]:
    argv = [*SKULLVAE, "complete", "--input", *map(str, inputs), "--output", str(out), "--jobs", str(jobs)]
    return timed([*argv, "--progress", "none"])


def same_files(a: Path, b: Path, names: list[str]) -> bool:
    import numpy as np

    from SkullVAELib.io.segfile import read_segmentation

    for name in names:
        _, one = read_segmentation(a / name)
        _, two = read_segmentation(b / name)
        if set(one) != set(two) or not all(np.array_equal(one[k], two[k]) for k in one):
            return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SKULLFIX)
    p.add_argument("--cases", default="000-019", help="SkullFix case ids, e.g. 000-019")
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = p.parse_args()
    from SkullVAELib.data.case_ids import parse_id_spec

    inputs = [args.data / "defective_skull" / f"{cid}.nrrd" for cid in parse_id_spec(args.cases)]
    names = [f"{path.stem}.seg.nrrd" for path in inputs]
    section = Section("batch_speed", "Batch: one call against one process per case (issue 26)")
    runs: dict[str, list[tuple[float, float]]] = {}
    same: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            base = Path(tmp) / f"separate{rep}"
            base.mkdir()
            runs.setdefault("separate", []).append(separate(inputs, base))
            for jobs in args.jobs:
                out = Path(tmp) / f"batch{jobs}_{rep}"
                key = f"batch --jobs {jobs}"
                runs.setdefault(key, []).append(batch(inputs, out, jobs))
                same[key] = same.get(key, True) and same_files(base, out, names)
    n = len(inputs)
    per_case = {k: statistics.median(w for w, _ in v) / n for k, v in runs.items()}
    rows = []
    for key, values in runs.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        rows.append([key, f"{wall:.1f}", f"{cpu:.1f}", f"{wall / n:.2f}", f"{per_case['separate'] / per_case[key]:.2f}×",
                     "–" if key == "separate" else ("yes" if same[key] else "**no**")])  # fmt: skip
    section.add(
        f"SkullFix defective_skull {args.cases} ({n} cases), default settings (no model: the rim fit), "
        f"{args.reps} repetition(s), medians; separate = {n} processes one after the other."
    )
    section.add(table(["run", "wall s", "CPU s", "wall s per case", "gain per case", "same files"], rows))
    if not args.no_write:
        section.write()


if __name__ == "__main__":
    main()
