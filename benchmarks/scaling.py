"""Scaling and FLOPs: training step time / peak memory vs grid and batch, FLOPs per sample and the
fraction of the CPU's peak achieved, and completion time vs input size.

* FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (no
  arithmetic is done): training = forward + loss + backward of our VAE; inference = encode + decode;
  the MONAI VarAutoEncoder with the paper's 2-channel head is counted too.
* Step time: our VAE, channels-last-3d, Adam, ``vae_loss``, one warm-up step then the median of
  ``--steps`` steps; each grid runs in its own process so its peak RSS (``ru_maxrss``, batches in
  increasing order) is that grid's.
* Completion vs input size: ``completion.complete`` (in-process, after a warm-up) on SkullFix
  defective case ``--case`` resampled to 256×256×Z/2, at 512×512×Z and 512×512×2Z (slices repeated),
  with the ORACLE decoder output (see ``complete_latency.py``), plus ``write_segmentation``.

    .venv/bin/python benchmarks/scaling.py --threads 2 --steps 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import time
from pathlib import Path

from _report import PYTHON, ROOT, SKULLFIX, Section, peak_gflops, table

HERE = Path(__file__).resolve()
GRIDS = ((64, 64, 32), (128, 128, 64), (256, 256, 128))
PAPER_CHANNELS = (32, 64, 64, 128, 128, 256)


def channels_for(grid) -> tuple[int, ...]:
    """The paper's channels, cut to the depth the grid allows (64×64×32: 5 blocks, 2^5 = 32)."""
    depth = len(PAPER_CHANNELS)
    while min(grid) % 2**depth:
        depth -= 1
    return PAPER_CHANNELS[:depth]


def count_flops(grid) -> dict[str, float]:
    """GFLOP per sample: ours train / inference, MONAI reference train / inference (batch 1, meta device)."""
    import torch
    from monai.networks.nets import VarAutoEncoder
    from torch.utils.flop_counter import FlopCounterMode

    from SkullVAELib.core.config import NetworkConfig
    from SkullVAELib.vae.losses import vae_loss
    from SkullVAELib.vae.networks import VAE

    out = {}
    with torch.device("meta"):
        ours = VAE(NetworkConfig(grid=grid, channels=channels_for(grid))).train()
        ref = VarAutoEncoder(spatial_dims=3, in_shape=(1, *grid), out_channels=2, channels=channels_for(grid),
                             strides=(2,) * len(channels_for(grid)), latent_size=32, norm="BATCH", num_res_units=0).train()  # fmt: skip
        x = torch.rand(1, 1, *grid)
    for name, model in (("ours", ours), ("reference", ref)):
        with FlopCounterMode(display=False) as counter:
            recon, mu, logvar, _ = model(x)
            prob = recon if name == "ours" else torch.softmax(recon, 1)[:, 1:]
            vae_loss(prob, x, mu, logvar, 100.0)["loss"].backward()
        out[f"{name}_train"] = counter.get_total_flops() / 1e9
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()
            model(x)
        out[f"{name}_infer"] = counter.get_total_flops() / 1e9
    return out


def step_child(grid, batches: list[int], steps: int, threads: int) -> None:
    import torch

    from SkullVAELib.core.config import NetworkConfig
    from SkullVAELib.vae.losses import vae_loss
    from SkullVAELib.vae.networks import VAE

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vae = VAE(NetworkConfig(grid=grid, channels=channels_for(grid))).train().to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-4)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result = {"base_rss_gb": base, "batches": {}}
    for batch in batches:
        x = (torch.rand(batch, 1, *grid) > 0.9).float().contiguous(memory_format=torch.channels_last_3d)
        times = []
        for _ in range(steps + 1):
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            prob, mu, logvar, _ = vae(x)
            vae_loss(prob, x, mu, logvar, 100.0)["loss"].backward()
            opt.step()
            times.append(time.perf_counter() - t)
        result["batches"][batch] = {
            "step_s": statistics.median(times[1:]),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        }
    print(json.dumps(result))


def completion_child(data: Path, case: str, threads: int) -> None:
    import numpy as np
    import torch

    from SkullVAELib.bundle.model_bundle import new_bundle
    from SkullVAELib.core.config import PRESETS, CompletionConfig
    from SkullVAELib.data.grid import to_model_grid
    from SkullVAELib.io.image import read_skull
    from SkullVAELib.io.segfile import Segment, write_segmentation
    from SkullVAELib.vae.completion import complete

    torch.set_num_threads(threads)
    bundle = new_bundle(PRESETS["paper"], aggregated=True, seed=0)
    d = bundle.network.latent_size
    bundle.set_centroids({"complete": np.zeros(d), "cranial": 0.1 * np.ones(d)})
    target = torch.from_numpy(to_model_grid(read_skull(data / "complete_skull" / f"{case}.nrrd"), (256, 256, 128)))
    decoder = bundle.completion_decoder
    real = decoder.logits
    decoder.logits = lambda z: (real(z), (target[None, None] - 0.5) * 20.0)[1]
    skull = read_skull(data / "defective_skull" / f"{case}.nrrd")
    inputs = {
        "256×256×Z/2 (every 2nd voxel)": skull.__class__(skull.mask[::2, ::2, ::2], skull.origin, skull.spacing * 2, skull.direction),
        "512×512×Z (original)": skull,
        "512×512×2Z (slices repeated)": skull.__class__(np.repeat(skull.mask, 2, axis=2), skull.origin,
                                                       skull.spacing * [1, 1, 0.5], skull.direction),
    }  # fmt: skip
    cfg = CompletionConfig(defect="cranial")
    complete(inputs["256×256×Z/2 (every 2nd voxel)"], bundle, cfg, device="cpu")  # warm-up
    rows = []
    for name, image in inputs.items():
        t = time.perf_counter()
        result = complete(image, bundle, cfg, device="cpu")
        write_segmentation(Path("/dev/null") if False else _tmp_seg(), result.completed,
                           [Segment("Completed skull", result.completed.mask), Segment("Implant", result.implant.mask)])  # fmt: skip
        rows.append({"input": name, "shape": list(image.shape), "seconds": time.perf_counter() - t,
                     "timings": result.timings, "implant_cm3": result.implant_volume_mm3 / 1000})  # fmt: skip
    print(json.dumps(rows))


def _tmp_seg() -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / "skullvae-bench-scaling.seg.nrrd"


def run_json(args: list[str]):
    proc = subprocess.run([PYTHON, str(HERE), *args], capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=1, help="timed steps per (grid, batch) after one warm-up")
    p.add_argument("--batches", default="1,2,4")
    p.add_argument("--data", type=Path, default=SKULLFIX)
    p.add_argument("--case", default="000")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child-grid", help=argparse.SUPPRESS)
    p.add_argument("--child-completion", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.child_grid:
        return step_child(tuple(map(int, args.child_grid.split(","))), batches, args.steps, args.threads)
    if args.child_completion:
        return completion_child(args.data, args.case, args.threads)

    peak, assumption = peak_gflops()
    section = Section("scaling", "3–4. Scaling, FLOPs and fraction of peak", args.threads)
    flops = {g: count_flops(g) for g in GRIDS}
    rows = [["×".join(map(str, g)) + ("" if channels_for(g) == PAPER_CHANNELS else f" ({len(channels_for(g))} blocks)"), f"{f['ours_train']:.1f}", f"{f['ours_infer']:.1f}", f"{f['reference_train']:.1f}",
             f"{f['reference_infer']:.1f}"] for g, f in flops.items()]  # fmt: skip
    section.add(
        "FLOPs per sample (GFLOP; FlopCounterMode counts convolutions and matrix products, 2 FLOP per "
        "multiply-add; element-wise ops, BatchNorm and PReLU are not counted):\n\n"
        + table(["grid", "ours train (fwd+bwd)", "ours inference", "MONAI reference train", "MONAI reference inference"], rows)
    )  # fmt: skip
    rows = []
    for grid in GRIDS:
        res = run_json(["--child-grid", ",".join(map(str, grid)), "--batches", args.batches, "--steps", str(args.steps),
                        "--threads", str(args.threads)])  # fmt: skip
        for batch, r in res["batches"].items():
            gflops = flops[grid]["ours_train"] * int(batch) / r["step_s"]
            rows.append(["×".join(map(str, grid)), batch, f"{r['step_s']:.2f}", f"{r['step_s'] / int(batch):.2f}",
                         f"{r['peak_rss_gb']:.2f}", f"{gflops:.0f}", f"{100 * gflops / peak:.0f} %"])  # fmt: skip
            print(rows[-1], flush=True)
    section.add(
        f"Training step (our VAE, channels-last, Adam; median of {args.steps} step(s) after a warm-up; peak RSS of "
        "the process, batches run in increasing order). Peak assumption: " + assumption + ".\n\n"
        + table(["grid", "batch", "step s", "s / sample", "peak RSS GB", "achieved GFLOP/s", "of fp32 peak"], rows)
    )  # fmt: skip
    comp = run_json(
        ["--child-completion", "--data", str(args.data), "--case", args.case, "--threads", str(args.threads)]
    )
    rows = []
    for r in comp:
        t = r["timings"]
        rows.append([r["input"], "×".join(map(str, r["shape"])), f"{r['seconds']:.2f}", f"{t['to_grid']:.2f}",
                     f"{t['encode'] + t['decode']:.2f}", f"{t['implant_model_grid'] + t['implant_original']:.2f}",
                     f"{r['implant_cm3']:.1f}"])  # fmt: skip
    section.add(
        f"Completion vs input size (in-process `complete()` + `write_segmentation`, case {args.case}, model "
        "256×256×128, ORACLE decoder output, after a warm-up; file reading and imports excluded):\n\n"
        + table(["input", "voxels", "seconds", "to grid", "encode+decode", "implant", "implant cm³"], rows)
    )  # fmt: skip
    if not args.no_write:
        section.write()


if __name__ == "__main__":
    main()
