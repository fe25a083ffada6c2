"""Completion latency and peak RSS of `skullvae complete` on a full-resolution SkullFix case.

Each measured run is a fresh process running the real CLI (``SkullVAELib.cli.main``), so the
wall time includes Python start-up and imports, exactly as a user (or Slicer) pays it; peak
RSS is that process's ``ru_maxrss``. The model is an untrained paper-preset bundle at
256×256×128 with centroids (``bundle.new_bundle`` + ``set_centroids``). ORACLE (labelled):
an untrained decoder decodes an arbitrary blob, so the real decoder runs (its time counts)
but its output is replaced by the case's complete skull on the model grid (prepared in a
separate process), so the implant, STL and write stages see a realistic implant.

Variants run interleaved: "as found" (channels-first float32), channels-last (now the
default; the integer-factor grid fast path is in the library since), + bfloat16
(``--precision bfloat16``), and 1 thread. Also: import times and the output gzip level.

    .venv/bin/python benchmarks/complete_latency.py --case 000 --threads 2 --reps 2
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import PYTHON, ROOT, SKULLFIX, Section, table

HERE = Path(__file__).resolve()
STAGES = ("read", "to_grid", "encode", "decode", "implant_model_grid", "implant_original", "back_to_grid",
          "write_segmentation", "write_stl")  # fmt: skip
VARIANTS = {
    "as found (channels-first fp32)": dict(channels_last=False),
    "channels-last fp32 (applied, default)": dict(),
    "+ bfloat16 (--precision bfloat16, opt-in)": dict(precision="bfloat16"),
}


def make_model(folder: Path) -> None:
    import numpy as np

    from SkullVAELib.bundle.model_bundle import new_bundle
    from SkullVAELib.core.config import PRESETS

    bundle = new_bundle(PRESETS["paper"], aggregated=True, seed=0)
    rng = np.random.default_rng(0)
    d = bundle.network.latent_size
    bundle.set_centroids(
        {"complete": np.zeros(d), "cranial": 0.1 * rng.normal(size=d), "facial": 0.1 * rng.normal(size=d)}
    )
    bundle.save(folder)


def prepare_oracle(complete: Path, npy: Path) -> None:
    import numpy as np

    from SkullVAELib.io.image import read_skull
    from SkullVAELib.vae.grid import to_model_grid

    np.save(npy, to_model_grid(read_skull(complete), (256, 256, 128)))


def child(args) -> None:
    """One CLI run in this process; prints one JSON line."""
    start = time.perf_counter()
    opts = json.loads(args.child)
    import numpy as np
    import torch

    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.cli import main as cli_main
    from SkullVAELib.vae import completion

    completion.CHANNELS_LAST = opts.get("channels_last", True)
    if args.oracle:
        target = torch.from_numpy(np.load(args.oracle))[None, None]
        load = ModelBundle.load

        def load_with_oracle(folder, device="cpu"):
            bundle = load(folder, device=device)
            decoder = bundle.completion_decoder
            real = decoder.logits
            decoder.logits = lambda z: (real(z), ((target - 0.5) * 20.0))[1]  # real decoder runs, oracle returned
            return bundle

        ModelBundle.load = load_with_oracle
    imported = time.perf_counter() - start
    out = Path(args.out)
    argv = ["complete", "--model", args.model, "--input", args.input, "--output", str(out / "r.seg.nrrd"),
            "--implant-stl", str(out / "i.stl"), "--defect", "cranial", "--threads", str(opts.get("threads", args.threads)),
            "--precision", opts.get("precision", "float32"), "--progress", "json"]  # fmt: skip
    real_stdout, capture = sys.stdout, io.StringIO()  # the CLI's JSON progress lines
    try:
        sys.stdout = capture
        code = cli_main(argv)
    finally:
        sys.stdout = real_stdout
    record = json.loads(capture.getvalue().strip().splitlines()[-1])["result"]
    print(json.dumps({
        "code": code, "imports_s": imported, "timings": record["timings"],
        "implant_cm3": record["implant_volume_mm3"] / 1000,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }))  # fmt: skip


def run_child(args, opts: dict, model: Path, oracle: Path | None, out: Path) -> dict:
    cmd = [PYTHON, str(HERE), "--child", json.dumps(opts), "--model", str(model), "--input", str(args.input_path),
           "--out", str(out), "--threads", str(args.threads)] + (["--oracle", str(oracle)] if oracle else [])  # fmt: skip
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"child failed: {proc.stderr[-2000:]}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec["wall_s"] = wall
    return rec


def import_times() -> list[list]:
    rows = []
    for label, code in [
        ("python start-up", "pass"),
        ("import torch", "import torch"),
        ("import torch + monai.networks.blocks", "import torch, monai.networks.blocks"),
        (
            "import SkullVAELib.bundle.model_bundle (torch, safetensors; no MONAI since)",
            "import SkullVAELib.bundle.model_bundle",
        ),
        ("`skullvae complete --help` (dispatcher imports every verb)", None),
    ]:
        cmd = [PYTHON, "-m", "SkullVAELib", "complete", "--help"] if code is None else [PYTHON, "-c", code]
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, cwd=ROOT, check=True)
        rows.append([label, f"{time.perf_counter() - t:.2f}"])
    return rows


def compression_levels(args) -> str:
    cmd = [PYTHON, str(HERE), "--compression", "--input", str(args.input_path), "--threads", str(args.threads)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout


def compression_child(args) -> None:
    """Write the defective skull ∪ its implant as a 2-segment .seg.nrrd at several gzip levels."""
    from SkullVAELib.io.image import read_skull
    from SkullVAELib.io.segfile import Segment, write_segmentation

    defective = read_skull(args.input)
    implant = read_skull(Path(args.input).parents[1] / "implant" / Path(args.input).name)
    segments = [Segment("Completed skull", defective.mask | implant.mask), Segment("Implant", implant.mask)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in (1, 3, 6, 9):
            path = Path(tmp) / f"l{level}.seg.nrrd"
            t = time.perf_counter()
            write_segmentation(path, defective, segments, compression_level=level)
            rows.append([str(level), f"{time.perf_counter() - t:.2f}", f"{path.stat().st_size / 1e6:.2f}"])
    print(table(["gzip level", "write_segmentation s", "file MB"], rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SKULLFIX)
    p.add_argument("--case", default="000", help="SkullFix case id (defective_skull/ID.nrrd)")
    p.add_argument("--model", help="model bundle (default: an untrained paper bundle made in a temp folder)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--no-oracle", action="store_true", help="keep the untrained decoder's output")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--compression", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--oracle", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.compression:
        return compression_child(args)
    args.input_path = args.data / "defective_skull" / f"{args.case}.nrrd"
    with tempfile.TemporaryDirectory(prefix="skullvae-bench-complete-") as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else tmp / "model"
        if not args.model:
            subprocess.run([PYTHON, "-c", f"import sys; sys.path.insert(0, {str(HERE.parent)!r}); "
                            f"import complete_latency as c; c.make_model({str(model)!r})"], cwd=ROOT, check=True)  # fmt: skip
        oracle = None
        if not args.no_oracle:
            oracle = tmp / "oracle.npy"
            subprocess.run([PYTHON, "-c", f"import sys; sys.path.insert(0, {str(HERE.parent)!r}); import complete_latency as c; "
                            f"c.prepare_oracle({str(args.data / 'complete_skull' / f'{args.case}.nrrd')!r}, {str(oracle)!r})"],
                           cwd=ROOT, check=True)  # fmt: skip
        section = Section(
            "complete_latency", "2. Completion latency (`skullvae complete`, full resolution)", args.threads
        )
        section.add(
            f"SkullFix defective_skull/{args.case}.nrrd (512×512×Z), untrained paper-preset bundle at 256×256×128 "
            f"with centroids, `--defect cranial --implant-stl`, {args.threads} threads"
            + (", **ORACLE decoder output** (the decoder runs; its output is replaced by the complete skull so "
               "the implant stages are realistic)" if oracle else "")
            + f". Each run is a fresh process; median of {args.reps} interleaved runs. Seconds."
        )  # fmt: skip
        runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        runs["channels-last fp32, 1 thread"] = []
        for rep in range(args.reps):
            for name, opts in VARIANTS.items():
                runs[name].append(run_child(args, opts, model, oracle, tmp))
                print(rep, name, json.dumps(runs[name][-1]), flush=True)
            if rep == 0:
                runs["channels-last fp32, 1 thread"].append(run_child(args, {"threads": 1}, model, oracle, tmp))
        header = [
            "variant",
            "process wall",
            "start-up + imports",
            "load model",
            *STAGES,
            "library total",
            "peak RSS GB",
        ]
        rows = []
        for name, recs in runs.items():

            def med(key, recs=recs):
                return statistics.median(r["timings"].get(key, 0.0) for r in recs)

            total = med("total")
            wall = statistics.median(r["wall_s"] for r in recs)
            load = total - sum(med(s) for s in STAGES)
            rows.append([name, f"**{wall:.2f}**", f"{wall - total:.2f}", f"{load:.2f}", *(f"{med(s):.2f}" for s in STAGES),
                         f"{total:.2f}", f"**{max(r['peak_rss_gb'] for r in recs):.2f}**"])  # fmt: skip
        section.add(table(header, rows))
        section.add(
            "process wall = what `skullvae complete` costs from the shell; start-up + imports = wall − the CLI's "
            "own total (Python, torch, MONAI, SciPy, SimpleITK, VTK, slicerio); load model = CLI total − the "
            f"stages. Implant volume: {runs['channels-last fp32 (applied, default)'][0]['implant_cm3']:.1f} cm³. "
            "Targets: ≤ 5 s wall, ≤ 3 GB peak RSS."
        )
        section.add("Import times (fresh process each, seconds):\n\n" + table(["what", "s"], import_times()))
        section.add("Output compression (the CLI writes gzip level 3):\n\n" + compression_levels(args))
    if not args.no_write:
        section.write()


if __name__ == "__main__":
    main()
