"""Reconstruction DSC and latent Gaussianity of model bundles on chosen case ids (model grid, fast).

For each ``--models`` bundle and the cases of ``--ids`` (every class present: complete, cranial,
facial), from the model-grid cache: μ, log σ² (encoder in eval mode), REC DSC = Dice(decode(μ) > 0.5,
target > 0.5) on the model grid (the paper's Table 1 way, with the bundle's completion decoder),
and the aggregate posterior's Gaussianity (``gaussianity.latent_gaussianity``: moment-matched KL to
N(0, I), MMD p-value, active units). Used to choose ``--recon-scale`` on the validation split
(issue 11, docs/results/issue-11.md) without touching the test split. Prints a markdown table; ``--json``
writes every number.

    .venv/bin/python benchmarks/latent_quality.py --models runs/m1 runs/m2 --data SF runs/facial \
        --ids 056-063 --cache-dir runs/cache
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def measure(model: Path, data: list[str], ids: str, cache_dir: str | None, permutations: int) -> dict:
    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.data.dataset import build_cache, discover_cases, select_cases
    from SkullVAELib.evaluation.gaussianity import latent_gaussianity
    from SkullVAELib.evaluation.metrics import dice
    from SkullVAELib.vae.stages import encode_dataset

    bundle = ModelBundle.load(model)
    cases = select_cases(discover_cases(data), ids, "--ids")
    cached = build_cache(cases, bundle.network.grid, cache_dir=cache_dir, mode=bundle.resample)
    mu, logvar = encode_dataset(bundle.encoder, cached.volumes, amp=False)
    decoder = bundle.completion_decoder.eval()
    with torch.no_grad():
        prob = torch.cat([decoder(mu[i : i + 8]) for i in range(0, mu.shape[0], 8)])[:, 0].numpy()
    target = cached.volumes[:, 0].float().numpy()
    dsc = np.array([dice(p > 0.5, t > 0.5) for p, t in zip(prob, target, strict=True)])
    labels = np.array(cached.labels)
    g = latent_gaussianity(mu.numpy(), logvar.numpy(), n_permutations=permutations)
    return {
        "model": str(model),
        "kind": bundle.kind,
        "info": {k: bundle.info.get(k) for k in ("beta", "epochs_stage1", "epochs_stage2", "stage2_latent")},
        "n": int(len(dsc)),
        "rec_dsc": float(dsc.mean()),
        "rec_dsc_by_label": {lab: float(dsc[labels == lab].mean()) for lab in sorted(set(labels))},
        "kl_aggregate": g["aggregate"]["kl_total"],
        "kl_mu_only": g["mu_only"]["kl_total"],
        "mmd2": g["mmd"]["mmd2"],
        "mmd_p": g["mmd"]["p_value"],
        "active_units": g["active_units"],
        "d": g["d"],
        "mean_sigma": float(torch.exp(0.5 * logvar).mean()),
        "verdict": g["verdict"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", type=Path, required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--ids", required=True, help='case ids, e.g. "056-063"')
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--permutations", type=int, default=500)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    rows = [measure(m, args.data, args.ids, args.cache_dir, args.permutations) for m in args.models]
    print(f"ids {args.ids}, model grid; REC DSC = Dice(decode(mu) > 0.5, target > 0.5)\n")
    print("| model | REC DSC | KL aggregate (nats) | MMD p | active units | mean σ |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {Path(r['model']).name} | {r['rec_dsc']:.4f} | {r['kl_aggregate']:.3f} | {r['mmd_p']:.3f} "
            f"| {r['active_units']} / {r['d']} | {r['mean_sigma']:.3f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
