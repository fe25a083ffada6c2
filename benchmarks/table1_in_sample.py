"""Table 1 IN-SAMPLE: the paper's REC/CMP DSC on cases the model trained on (as the authors reported it).

``skullvae evaluate`` refuses training ids (its numbers are held-out by design); the paper's Table 1
was computed on the training cases, so the reproduction (issue 11, docs/RESULTS.md) needs the same
protocol on training ids for the "ours in-sample" column. This script runs the library's
``evaluation.evaluate`` on ``--ids`` regardless, and labels everything in-sample.

    .venv/bin/python benchmarks/table1_in_sample.py --model runs/m --data SF runs/facial --ids 000-015 \
        --cache-dir runs/cache --json runs/m-in-sample.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--ids", required=True, help="TRAINING case ids to evaluate in-sample, e.g. 000-015")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--permutations", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    from SkullVAELib.bundle import ModelBundle
    from SkullVAELib.dataset import discover_cases, select_cases
    from SkullVAELib.evaluation import evaluate

    bundle = ModelBundle.load(args.model)
    cases = select_cases(discover_cases(args.data), args.ids, "--ids")
    trained = set(bundle.info.get("train_case_ids") or [])
    outside = sorted({c.case_id for c in cases} - trained)
    if trained and outside:
        raise SystemExit(f"not training cases of this model: {', '.join(outside[:5])} (use skullvae evaluate)")
    result = evaluate(
        bundle, cases, None, device=args.device, cache_dir=args.cache_dir, n_permutations=args.permutations
    )
    g = result.gaussianity["test"]
    summary = {
        "model": str(args.model),
        "in_sample_ids": result.test_ids,
        "table1": result.table1,
        "implant": result.implant,
        "classification": result.classification,
        "gaussianity": {
            "kl_aggregate": g["aggregate"]["kl_total"],
            "mmd_p": g["mmd"]["p_value"],
            "active_units": g["active_units"],
            "d": g["d"],
            "verdict": g["verdict"],
        },
        "seconds": result.seconds,
    }
    t = result.table1["model_grid"]
    print(f"IN-SAMPLE ({len(result.test_ids)} training ids), model grid:")
    print("| REC cranial | REC facial | REC complete | CMP cranial | CMP facial |")
    print("| --- | --- | --- | --- | --- |")
    cells = [t["rec"].get(k, np.nan) for k in ("cranial", "facial", "complete")]
    cells += [t["cmp"].get(k, np.nan) for k in ("cranial", "facial")]
    print("| " + " | ".join(f"{v:.4f}" for v in cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    main()
