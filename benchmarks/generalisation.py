"""Issue 9 levers 2-3: the train/validation reconstruction gap and the test-time fit, measured.

Not a timing benchmark: a measurement script for docs/results/issue-09.md.

``gap``: model-grid reconstruction DSC (encode μ, decode, > 0.5 against the cached target > 0.5,
the paper's REC) of a bundle on the cases of ``--ids``, per label (complete / cranial / facial).

    python benchmarks/generalisation.py gap --model M --data DIR... --ids 000-055 --cache-dir C

``fit``: completion of the cranial (and facial) defective cases of ``--ids`` with and without the
test-time fit (``--fit-steps``), implant DSC / bDSC (10 mm) / HD95 (mm) at the original resolution
(``metrics.implant_metrics``) and the delivered completed-skull DSC, per case and mean / median.

    python benchmarks/generalisation.py fit --model M --data DIR... --ids 056-063 --fit-steps 0,100

``fitgrid``: the same comparison on the model grid only (fast; for choosing the fit's settings on
validation): implant = the cleaned decoded bone outside the patient's bone (``implant`` rules),
DSC against the model-grid ground-truth implant (complete − defective, > 0.5).

    python benchmarks/generalisation.py fitgrid --model M --data DIR... --ids 056-063 --fit-steps 0,50,100

All print a markdown table and, with ``--json OUT``, write the rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch


def _cases(args):
    from SkullVAELib.data.case_ids import parse_id_spec
    from SkullVAELib.data.dataset import discover_cases, select_cases

    return select_cases(discover_cases([Path(d) for d in args.data]), parse_id_spec(args.ids))


def gap(args) -> list[dict]:
    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.data.dataset import build_cache
    from SkullVAELib.evaluation.metrics import dice as metrics_dice

    dice = partial(metrics_dice, threshold=0.5)  # probabilities and soft occupancy: above ½
    bundle = ModelBundle.load(args.model)
    data = build_cache(_cases(args), bundle.network.grid, cache_dir=args.cache_dir)
    rows = []
    with torch.inference_mode():
        enc, dec = bundle.encoder.eval(), bundle.completion_decoder.eval()
        for n in range(len(data)):
            x = data.volumes[n : n + 1].float()
            mu, _ = enc(x)
            prob = dec(mu)[0, 0].numpy()
            rows.append({"case": data.case_ids[n], "label": data.labels[n], "rec_dsc": dice(prob, x[0, 0].numpy())})
    print(f"| {args.model} | ids {args.ids} | " + " | ".join(_summary(rows, "rec_dsc")) + " |")
    return rows


def _summary(rows: list[dict], key: str) -> list[str]:
    out = []
    for label in sorted({r["label"] for r in rows}):
        vals = [r[key] for r in rows if r["label"] == label and r.get(key) is not None]
        out.append(f"{label} {np.mean(vals):.3f} (median {statistics.median(vals):.3f}, n={len(vals)})")
    return out


def fit(args) -> list[dict]:
    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.core.config import CompletionConfig
    from SkullVAELib.evaluation.metrics import dice, implant_metrics
    from SkullVAELib.io.image import read_skull
    from SkullVAELib.vae.completion import complete
    from SkullVAELib.vae.testtime_fit import FitConfig

    bundle = ModelBundle.load(args.model)
    cases = [c for c in _cases(args) if c.label in ("cranial", "facial")]
    partners = {c.case_id: c for c in _cases(args) if c.label == "complete"}
    rows = []
    for case in cases:
        skull = read_skull(case.path, kind="binary")
        truth = read_skull(case.implant_path, kind="binary").mask if case.implant_path else None
        full = read_skull(partners[case.case_id].path, kind="binary").mask if case.case_id in partners else None
        if truth is None and full is not None:
            truth = full & ~skull.mask
        for steps in args.fit_steps:
            fit_cfg = FitConfig(
                steps=steps, mode=args.mode, lr=args.lr, prior_weight=args.prior, dilation_mm=args.dilation
            )
            t = time.perf_counter()
            res = complete(
                skull, bundle, CompletionConfig(gamma=args.gamma, defect=case.label), device="cpu", fit=fit_cfg
            )
            row = {"case": case.case_id, "label": case.label, "fit_steps": steps, "seconds": time.perf_counter() - t}
            row.update(implant_metrics(res.implant.mask, truth, skull.mask, skull.spacing))
            row["completed_dsc"] = dice(res.completed.mask, full) if full is not None else None
            row["patient_bone_kept"] = bool(np.array_equal(res.completed.mask & skull.mask, skull.mask))
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    for steps in args.fit_steps:
        sel = [r for r in rows if r["fit_steps"] == steps]
        for key in ("dsc", "bdsc", "hd95", "completed_dsc"):
            print(f"| fit {steps} | {key} | " + " | ".join(_summary(sel, key)) + " |")
    return rows


def fitgrid(args) -> list[dict]:
    from SkullVAELib.bundle.model_bundle import ModelBundle
    from SkullVAELib.data.dataset import build_cache
    from SkullVAELib.evaluation.metrics import dice as metrics_dice
    from SkullVAELib.implant.cleanup import clean_model_grid_implant, model_spacing
    from SkullVAELib.io.image import read_skull
    from SkullVAELib.vae.testtime_fit import FitConfig, fit_to_patient

    dice = partial(metrics_dice, threshold=0.5)  # probabilities and soft occupancy: above ½
    bundle = ModelBundle.load(args.model)
    grid = bundle.network.grid
    data = build_cache(_cases(args), grid, cache_dir=args.cache_dir)
    index = {(lab, cid): n for n, (lab, cid) in enumerate(zip(data.labels, data.case_ids, strict=True))}
    cases = {c.case_id: c for c in _cases(args) if c.label == "cranial"}
    enc, dec = bundle.encoder.eval(), bundle.completion_decoder.eval()
    rows = []
    for (label, cid), n in sorted(index.items()):
        if label == "complete" or (label, cid) not in index or ("complete", cid) not in index:
            continue
        occ = data.volumes[n, 0].float().numpy()
        full = data.volumes[index[("complete", cid)], 0].float().numpy()
        truth = (full > 0.5) & ~(occ > 0.5)
        voxel_mm = model_spacing(read_skull(cases[cid].path, kind="binary"), grid) if cid in cases else np.ones(3)
        with torch.no_grad():
            mu = enc(torch.from_numpy(occ)[None, None])[0][0].numpy()
            shift = args.gamma * np.asarray(bundle.dev(label), np.float32)
            prob0 = torch.sigmoid(dec.logits(torch.from_numpy(mu + shift)[None]))[0, 0].numpy()
            rec = torch.sigmoid(dec.logits(torch.from_numpy(mu)[None]))[0, 0].numpy()
        added = (prob0 > 0.5) & ~(rec > 0.5)
        for steps in args.fit_steps:
            prob, region = prob0, added
            if steps:
                cfg = FitConfig(
                    steps=steps, mode=args.mode, lr=args.lr, prior_weight=args.prior, dilation_mm=args.dilation
                )
                res, region = fit_to_patient(dec, occ, mu, shift, prob0, added, voxel_mm, cfg)
                prob = res.probabilities
            imp = clean_model_grid_implant(prob > 0.5, occ, voxel_mm, 100.0, 10.0, region)
            row = {"case": cid, "label": label, "fit_steps": steps, "dsc": dice(imp, truth)}
            row["completed_dsc"] = dice(imp | (occ > 0.5), full > 0.5)
            row["skull_dsc"] = dice(prob, full)
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    for steps in args.fit_steps:
        sel = [r for r in rows if r["fit_steps"] == steps]
        for key in ("dsc", "completed_dsc", "skull_dsc"):
            print(f"| fit {steps} | {key} | " + " | ".join(_summary(sel, key)) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("gap", "fit", "fitgrid"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--data", nargs="+", required=True)
        p.add_argument("--ids", required=True)
        p.add_argument("--cache-dir", default=None)
        p.add_argument("--json", type=Path, default=None)
        p.add_argument("--threads", type=int, default=1)
    for name in ("fit", "fitgrid"):
        p = sub.choices[name]
        p.add_argument("--fit-steps", type=lambda s: [int(v) for v in s.split(",")], default=[0, 100])
        p.add_argument("--gamma", type=float, default=1.0)
        p.add_argument("--lr", type=float, default=0.1)
        p.add_argument("--prior", type=float, default=1e-3)
        p.add_argument("--dilation", type=float, default=10.0)
        p.add_argument("--mode", choices=("refit", "outside"), default="refit")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {"gap": gap, "fit": fit, "fitgrid": fitgrid}[args.what](args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
