"""Latency of `skullvae complete` by stage on full-resolution SkullFix cases (issue 26).

Three parts, each a section of docs/BENCHMARKS.md:

* **Stage profile** (``complete_latency``): each run is a fresh process that runs the real CLI
  (``SkullVAELib.cli.main``, default settings: ``--defect cranial``, no model, so the rim fit with
  the mirror cue) twice on the same case: the first call is *cold* (lazy imports, first touch),
  the second *warm* (same process). Wall and CPU seconds (``time.process_time``: every thread of
  the process) per stage come from wrappers around the stage functions; "start-up + imports" is
  the process wall before the first call. Peak RSS is the process's ``ru_maxrss``. 1 and 2
  threads (``--threads``) interleaved; the load average is recorded around every run.
* **Rim fit A/B** (``rimfit_ab``, ``--ab``): the rim fit with the ray casting and rasterisation of
  ``--baseline`` (a commit before issue 26, read with ``git show``) against today's, same
  process, same mirror plane, interleaved: implant DSC and identity, wall and CPU per case.
* **Segmentation compression** (``seg_compression``, ``--compression``): the writer's gzip levels
  against the previous writer (slicerio/pynrrd) on one case (patient bone + implant, as the CLI writes them).

    .venv/bin/python benchmarks/complete_latency.py --cases 056 058 --reps 2
    .venv/bin/python benchmarks/complete_latency.py --ab 056 057 058 059 060 061 062 063
    .venv/bin/python benchmarks/complete_latency.py --compression 056
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import PYTHON, ROOT, SKULLFIX, Section, table

HERE = Path(__file__).resolve()
BASELINE = "07aef1a"  # the last commit before issue 26's ray casting
# (label, module, function): wrapped in the child; inclusive seconds per call, summed
STAGES = [
    ("read", "SkullVAELib.io.image", "read_skull"),
    ("mirror plane", "SkullVAELib.implant.symmetry", "find_mirror_plane"),
    ("rim fit", "SkullVAELib.implant.rimfit", "rim_fit"),
    ("ray centre", "SkullVAELib.implant.raycast", "cranial_centre"),
    ("ray casting", "SkullVAELib.implant.raycast", "cast"),
    ("rasterise", "SkullVAELib.implant.rimfit", "rasterise"),
    ("post-processing", "SkullVAELib.implant.postprocess", "postprocess_implant"),
    ("write segmentation", "SkullVAELib.io.segfile", "write_segmentation"),
]
ROWS = ["start-up + imports", "read", "mirror plane", "ray centre + casting", "fill (holes, splines)", "rasterise",
        "post-processing", "write segmentation", "other (Completer, checks, lazy imports)", "CLI call", "process (start-up + cold + warm call)"]  # fmt: skip


def _instrument(record: dict) -> None:
    """Wrap every STAGES function, wherever it was imported by name, to add to ``record``."""
    import importlib

    for label, module, name in STAGES:
        original = getattr(importlib.import_module(module), name)

        def wrapped(*args, _f=original, _label=label, **kwargs):
            w, c = time.perf_counter(), time.process_time()
            try:
                return _f(*args, **kwargs)
            finally:
                totals = record.setdefault(_label, [0.0, 0.0])
                totals[0] += time.perf_counter() - w
                totals[1] += time.process_time() - c

        for mod in list(sys.modules.values()):
            if getattr(mod, "__name__", "").startswith("SkullVAELib") and getattr(mod, name, None) is original:
                setattr(mod, name, wrapped)


def _rows(record: dict, call: tuple[float, float]) -> dict:
    """Exclusive (wall, CPU) per ROWS entry from the inclusive stage totals of one CLI call."""

    def get(label):
        return record.get(label, [0.0, 0.0])

    def minus(a, *bs):
        return [a[i] - sum(b[i] for b in bs) for i in range(2)]

    cast = [get("ray centre")[i] + get("ray casting")[i] for i in range(2)]
    fill = minus(get("rim fit"), cast, get("rasterise"), get("post-processing"))
    main = [get(k) for k in ("read", "mirror plane", "rim fit", "write segmentation")]
    return {
        "read": get("read"),
        "mirror plane": get("mirror plane"),
        "ray centre + casting": cast,
        "fill (holes, splines)": fill,
        "rasterise": get("rasterise"),
        "post-processing": get("post-processing"),
        "write segmentation": get("write segmentation"),
        "other (Completer, checks, lazy imports)": minus(list(call), *main),
        "CLI call": list(call),
    }


def child(args) -> None:
    """Two CLI calls on one case in this process; prints one JSON line."""
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    import io

    from SkullVAELib.cli import main as cli_main

    record: dict = {}
    _instrument(record)
    imports = [time.perf_counter() - start_wall, time.process_time() - start_cpu]
    calls = []
    for label in ("cold", "warm"):
        record.clear()
        out = Path(args.out) / f"{label}.seg.nrrd"
        argv = ["complete", "--input", args.input, "--output", str(out), "--defect", "cranial", "--threads",
                str(args.threads), "--progress", "none"] + (["--model", args.model] if args.model else [])  # fmt: skip
        w, c = time.perf_counter(), time.process_time()
        real_stdout, sys.stdout = sys.stdout, io.StringIO()
        try:
            code = cli_main(argv)
        finally:
            sys.stdout = real_stdout
        calls.append(
            {"label": label, "code": code, **_rows(record, (time.perf_counter() - w, time.process_time() - c))}
        )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"imports": imports, "calls": calls, "peak_rss_gb": usage.ru_maxrss / 2**20,
                      "in_process": [time.perf_counter() - start_wall, time.process_time() - start_cpu]}))  # fmt: skip


def run_child(args, case: str, threads: int, out: Path) -> dict:
    cmd = [PYTHON, str(HERE), "--child", "--input", str(args.data / "defective_skull" / f"{case}.nrrd"), "--out",
           str(out), "--threads", str(threads)] + (["--model", args.model] if args.model else [])  # fmt: skip
    load = os.getloadavg()[0]
    w, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    wall, after = time.perf_counter() - w, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"child failed: {proc.stderr[-2000:]}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # start-up = the process's wall before the first call (interpreter start included)
    rec["startup"] = [wall - rec["in_process"][0] + rec["imports"][0], cpu - rec["in_process"][1] + rec["imports"][1]]
    rec["process"] = [wall, cpu]
    rec["load"] = [load, os.getloadavg()[0]]
    return rec


def profile(args) -> None:
    section = Section("complete_latency", "2. Completion latency by stage (`skullvae complete`, rim fit)")
    runs: dict[tuple[int, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="skullvae-bench-") as tmp:
        for rep in range(args.reps):
            for case in args.cases:
                for threads in args.threads:
                    rec = run_child(args, case, threads, Path(tmp))
                    runs.setdefault((threads, case), []).append(rec)
                    print(rep, case, threads, json.dumps(rec), flush=True)
    header = ["stage"]
    for threads, case in runs:
        header += [f"{case} {threads} thr cold wall / CPU", "warm wall / CPU"]
    rows = []
    for name in ROWS:
        row = [name]
        for recs in runs.values():
            for index in (0, 1):

                def med(i, recs=recs, index=index, name=name):
                    if name == "start-up + imports":
                        return statistics.median(r["startup"][i] for r in recs) if index == 0 else None
                    if name.startswith("process"):
                        return statistics.median(r["process"][i] for r in recs) if index == 0 else None
                    return statistics.median(r["calls"][index][name][i] for r in recs)

                w, c = med(0), med(1)
                row.append("–" if w is None else f"{w:.2f} / {c:.2f}")
        rows.append(row)
    rss = [f"{max(r['peak_rss_gb'] for r in recs):.2f}" for recs in runs.values()]
    loads = [f"{min(r['load'][0] for r in recs):.1f}–{max(r['load'][1] for r in recs):.1f}" for recs in runs.values()]
    rows.append(["peak RSS GB", *[x for v in rss for x in (v, "")]])
    rows.append(["load average (1 min) around the runs", *[x for v in loads for x in (v, "")]])
    section.add(
        f"SkullFix defective_skull/{{{','.join(args.cases)}}}.nrrd, default settings (`--defect cranial`, no model: the "
        f"rim fit with the mirror cue), {args.reps} fresh process(es) per column, medians; each process completes the "
        "case twice: **cold** = its first call, **warm** = the second. Wall / CPU seconds (CPU = all threads of the "
        "process). fill = rim fit − centre − ray casting − rasterise − post-processing; other = the CLI call − the "
        "stages above it (the Completer, the implant check, the completed skull, lazy imports on a cold call)."
    )
    section.add(table(header, rows))
    if not args.no_write:
        section.write()


# --- rim fit A/B against the baseline commit ---------------------------------------------------


def _baseline_functions(commit: str):
    """(cast, rasterise) of ``commit``, loaded from ``git show`` into private modules."""
    import types

    import numpy as np
    from scipy import ndimage

    from SkullVAELib.implant import raycast

    code = subprocess.run(["git", "show", f"{commit}:SkullVAELib/implant/raycast.py"], capture_output=True,
                          text=True, cwd=ROOT, check=True).stdout  # fmt: skip
    old = types.ModuleType("baseline_raycast")
    sys.modules[old.__name__] = old
    exec(compile(code, "baseline_raycast.py", "exec"), old.__dict__)
    rim = subprocess.run(["git", "show", f"{commit}:SkullVAELib/implant/rimfit.py"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout  # fmt: skip
    body = re.search(r"\ndef rasterise\(.*?\n    return out\n", rim, re.S).group(0)
    space = {"np": np, "ndimage": ndimage, "raycast": old, "SkullImage": object}
    exec(body, space)

    def cast(skull, centre=None, step_deg=1.0, transform=None, volume=None, exact=None, **_):
        m = old.cast(skull, centre, step_deg, transform=transform)
        return raycast.RayMap(m.centre, m.step_deg, m.hit, m.r_out, m.r_in)

    return cast, space["rasterise"]


def ab(args) -> None:
    import numpy as np

    from SkullVAELib.evaluation.metrics import dice
    from SkullVAELib.implant import raycast, rimfit
    from SkullVAELib.implant.symmetry import find_mirror_plane
    from SkullVAELib.io.image import read_skull

    section = Section("rimfit_ab", f"2b. Rim fit: issue 26's ray casting against {args.baseline} (same implant?)")
    versions = {"new": (raycast.cast, rimfit.rasterise), "old": _baseline_functions(args.baseline)}
    rows = []
    for case in args.ab:
        skull = read_skull(args.data / "defective_skull" / f"{case}.nrrd")
        transform = find_mirror_plane(skull).transform()
        got = {}
        for name in ("new", "old"):
            raycast.cast, rimfit.rasterise = versions[name]
            load = os.getloadavg()[0]
            w, c = time.perf_counter(), time.process_time()
            result = rimfit.rim_fit(skull, mirror_transform=transform)
            got[name] = (result, time.perf_counter() - w, time.process_time() - c, load)
        raycast.cast, rimfit.rasterise = versions["new"]
        (new, wn, cn, ln), (old, wo, co, lo) = got["new"], got["old"]
        same_cells = all(np.array_equal(a.cells, b.cells) for a, b in zip(new.holes, old.holes, strict=True))
        rows.append([case, f"{dice(new.implant, old.implant):.4f}", "yes" if np.array_equal(new.implant, old.implant)
                     else "no", "yes" if same_cells else "no", ", ".join(h.source for h in new.holes) or "–",
                     f"{1.0 if new.raymap.exact is None else new.raymap.exact.mean():.2f}", f"{wo:.1f} / {co:.1f}", f"{wn:.1f} / {cn:.1f}", f"{co / cn:.1f}×",
                     f"{old.timings['raycast']:.1f} → {new.timings['raycast']:.2f}", f"{lo:.1f} / {ln:.1f}"])  # fmt: skip
        print(rows[-1], flush=True)
    section.add(
        "Validation cases, the rim fit (`rimfit.rim_fit`, default config) with the mirror plane of "
        "`find_mirror_plane` (the same for both), in one process: **old** = ray casting and rasterisation read with "
        f"`git show {args.baseline}:…` (scipy `map_coordinates` over every sample of every ray), **new** = today's "
        "`raycast.cast` as `rim_fit` calls it (numpy, empty space skipped; coarse to fine when the share of rays "
        "cast is below 1). Wall / CPU seconds of the whole rim fit; one numpy thread each."
    )
    header = ["case", "implant DSC new vs old", "same voxels", "same hole cells", "hole source",
              "rays cast at 1° (share)", "old s (wall / CPU)", "new s (wall / CPU)", "CPU old/new",
              "ray casting wall old → new", "load old / new"]  # fmt: skip
    section.add(table(header, rows))
    if not args.no_write:
        section.write()


# --- segmentation compression -------------------------------------------------------------------


def _slicerio_writer(skull, implant):
    """The writer before 2026-12-05 (slicerio → pynrrd's zlib), for comparison: ``write(path, level)``."""
    import numpy as np
    import slicerio

    voxels = skull.mask.astype(np.uint8) + 2 * implant.astype(np.uint8)  # (I, J, K), disjoint segments
    segmentation = {
        "voxels": voxels,
        "ijkToLPS": skull.index_to_physical(),
        "segments": [
            {"id": "Segment_1", "name": "Patient bone", "labelValue": 1, "layer": 0},
            {"id": "Segment_2", "name": "Implant", "labelValue": 2, "layer": 0},
        ],
        "referenceImageExtentOffset": [0, 0, 0],
    }
    return lambda path, level: slicerio.write_segmentation(str(path), segmentation, compression_level=level)


def compression(args) -> None:
    import numpy as np

    from SkullVAELib.core.memory import keep_freed_memory
    from SkullVAELib.io.image import read_skull
    from SkullVAELib.io.segfile import Segment, read_segmentation, write_segmentation

    case = args.compression
    keep_freed_memory()  # as `skullvae complete` runs: freed arrays reused, not faulted in afresh
    section = Section("seg_compression", "2c. Writing the segmentation: compression against time and size")
    skull = read_skull(args.data / "defective_skull" / f"{case}.nrrd")
    implant = read_skull(args.data / "implant" / f"{case}.nrrd").mask & ~skull.mask
    segments = [Segment("Patient bone", skull.mask), Segment("Implant", implant)]
    old = _slicerio_writer(skull, implant)
    writers = {f"ITK, level {n}": (lambda path, n=n: write_segmentation(path, skull, segments, compression_level=n))
               for n in (1, 2, 3, 6, 9)}  # fmt: skip
    writers |= {f"pynrrd (slicerio), level {n}": (lambda path, n=n: old(path, n)) for n in (1, 3)}
    results: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.reps + 1):  # the first round warms the page cache and is dropped
            for index, (name, write) in enumerate(writers.items()):
                path = Path(tmp) / f"{index}.seg.nrrd"
                w, c = time.perf_counter(), time.process_time()
                write(path)
                wall, cpu = time.perf_counter() - w, time.process_time() - c
                r = time.perf_counter()
                _, masks = read_segmentation(path)
                back = time.perf_counter() - r
                assert np.array_equal(masks["Implant"], implant)
                results.setdefault(name, []).append((wall, cpu, path.stat().st_size / 1e6, back))
    rows = []
    for name, recs in results.items():
        recs = recs[1:]
        med = [statistics.median(r[i] for r in recs) for i in range(4)]
        rows.append([name, f"{med[0]:.3f}", f"{med[1]:.3f}", f"{med[2]:.2f}", f"{med[3]:.2f}"])
    section.add(
        f"SkullFix defective_skull/{case}.nrrd ({'×'.join(map(str, skull.shape))}): the patient's bone and its "
        "true implant as two non-overlapping segments (one 3D uint8 layer, as `skullvae complete` writes them). "
        "`write_segmentation(..., compression_level=N)` (ITK's NRRD writer, default level 2) against the "
        f"writer before 2026-12-05 (slicerio → pynrrd's zlib, default level 3); median of {args.reps} after one "
        "warm-up round, freed memory kept for reuse as in `skullvae complete`; read back with `read_segmentation` (slicerio). The old writer's row times only slicerio's call (its label volume is made beforehand)."
    )
    section.add(table(["writer", "write wall s", "write CPU s", "file MB", "read back s"], rows))
    if not args.no_write:
        section.write()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SKULLFIX)
    p.add_argument("--cases", nargs="+", default=["056"], help="SkullFix case ids (defective_skull/ID.nrrd)")
    p.add_argument("--model", help="pass --model to the CLI (default: none, the rim fit)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--ab", nargs="+", metavar="CASE", help="run the rim-fit A/B on these cases instead")
    p.add_argument("--baseline", default=BASELINE, help="commit of the old ray casting (for --ab)")
    p.add_argument("--compression", metavar="CASE", help="time the segmentation writer's compression instead")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.threads = args.threads[0]
        return child(args)
    if args.ab:
        return ab(args)
    if args.compression:
        return compression(args)
    return profile(args)


if __name__ == "__main__":
    main()
