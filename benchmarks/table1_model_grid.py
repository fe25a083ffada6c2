"""Table 1 of the paper on the model grid (REC/CMP DSC), in-sample or held-out, from the cache (fast).

The paper's Table 1 is computed the way this script computes it: decode(μ) > 0.5 against the
resampled input > 0.5 (REC), and decode(μ + DEV of the true defect class) > 0.5 against the
resampled complete skull > 0.5 (CMP), on the model grid - and, in the authors' code, on the
TRAINING cases. The code decoded is the one the completion decoder was trained on: μ, except for
a bundle whose stage 2 ran on the authors' fixed z = μ + σ (``stage2_latent == "mu_plus_sigma"``),
where z = μ + σ (``ModelBundle.latent_code``) and DEV comes from the bundle's centroids, which
``fit-completion`` fits in the same code (its decoder never saw a code near μ ≈ 0). ``skullvae evaluate`` refuses training ids (its numbers are held-out by design
and include original-resolution metrics); issue 11's reproduction needs the in-sample column
too, so this script takes any ``--ids`` and says whether they are in-sample. It also reports
the aggregate posterior's Gaussianity of the same volumes.

    .venv/bin/python benchmarks/table1_model_grid.py --model runs/m --data SF runs/facial --ids 000-055 \
        --cache-dir runs/cache --json runs/m-table1-in-sample.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def table1(model: Path, data: list[str], ids: str, cache_dir: str | None, permutations: int) -> dict:
    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.data.dataset import build_cache, discover_cases, select_cases
    from SkullVAELib.evaluation.gaussianity import latent_gaussianity
    from SkullVAELib.evaluation.metrics import dice
    from SkullVAELib.vae.stages import encode_dataset

    bundle = ModelBundle.load(model)
    bundle.require_completion(model)
    cases = select_cases(discover_cases(data), ids, "--ids")
    cached = build_cache(cases, bundle.network.grid, cache_dir=cache_dir, mode=bundle.resample)
    trained = set(bundle.info.get("train_case_ids") or [])
    in_sample = {c in trained for c in cached.case_ids}
    mu, logvar = encode_dataset(bundle.encoder, cached.volumes, amp=False)
    decoder = bundle.completion_decoder.eval()
    labels, case_ids = list(cached.labels), list(cached.case_ids)
    code = bundle.latent_code(mu, logvar)  # μ, or μ + σ for a stage 2 on the authors' fixed z
    dev = {lab: torch.as_tensor(bundle.dev(lab)).float() for lab in bundle.defect_classes}
    shift = torch.stack([torch.zeros(mu.shape[1]) if lab == "complete" else dev[lab] for lab in labels])

    def decoded(z: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([decoder(z[i : i + 8]) for i in range(0, z.shape[0], 8)])[:, 0].numpy() > 0.5

    target = cached.volumes[:, 0].float().numpy() > 0.5
    rec, cmp_ = decoded(code), decoded(code + shift)
    complete_of = {cid: n for n, (cid, lab) in enumerate(zip(case_ids, labels, strict=True)) if lab == "complete"}
    rows = {"rec": {}, "cmp": {}}
    for n, (cid, lab) in enumerate(zip(case_ids, labels, strict=True)):
        rows["rec"].setdefault(lab, []).append(dice(rec[n], target[n]))
        if lab != "complete" and cid in complete_of:
            rows["cmp"].setdefault(lab, []).append(dice(cmp_[n], target[complete_of[cid]]))
    g = latent_gaussianity(mu.numpy(), logvar.numpy(), n_permutations=permutations)
    return {
        "model": str(model),
        "ids": ids,
        "n_volumes": len(labels),
        "split": "in-sample" if in_sample == {True} else "held-out" if in_sample == {False} else "mixed",
        "code": "mu + sigma" if code is not mu else "mu",
        "table1_model_grid": {k: {lab: float(np.mean(v)) for lab, v in d.items()} for k, d in rows.items()},
        "gaussianity": {
            "kl_aggregate": g["aggregate"]["kl_total"],
            "mmd2": g["mmd"]["mmd2"],
            "mmd_p": g["mmd"]["p_value"],
            "active_units": g["active_units"],
            "d": g["d"],
            "verdict": g["verdict"],
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", type=Path, required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--ids", required=True, help='case ids, e.g. "000-055" (in-sample) or "064-079" (held-out)')
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--permutations", type=int, default=500)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    results = [table1(m, args.data, args.ids, args.cache_dir, args.permutations) for m in args.models]
    print(f"Table 1 on the model grid, ids {args.ids}")
    print(
        "| model | split | REC cranial | REC facial | REC complete | CMP cranial | CMP facial | KL agg | MMD p | AU |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        t, g = r["table1_model_grid"], r["gaussianity"]
        cells = [t["rec"].get(k, np.nan) for k in ("cranial", "facial", "complete")]
        cells += [t["cmp"].get(k, np.nan) for k in ("cranial", "facial")]
        print(
            f"| {Path(r['model']).name} | {r['split']} | "
            + " | ".join(f"{v:.4f}" for v in cells)
            + f" | {g['kl_aggregate']:.3g} | {g['mmd_p']:.3f} | {g['active_units']}/{g['d']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
