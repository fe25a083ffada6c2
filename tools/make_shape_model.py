"""Fit the shape model the rim fit looks for (SkullVAELib/implant/shape_model.safetensors) from a shape bank.

Usage::

    skullvae build-shapes --data $SF --train-ids 000-055 --out BANK
    .venv/bin/python tools/make_shape_model.py BANK/shapes.safetensors SkullVAELib/implant/shape_model.safetensors

The bank (every training skull's ray map) stays private; the model keeps the mean shape, the first
10 principal modes and the mean thickness (docs/results/issue-24-2026-12-03.md, "A shape model as the default cue"), and a
card: the skulls it was fitted to (``--source`` and the bank's case ids) and the licence it inherits
from them (``--licence``; by default the model cards' licence of that data, SkullFix's). The model
measured in docs/RESULTS.md was made with the defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.case_ids import format_id_spec
from SkullVAELib.implant.shapebank import load_shape_bank
from SkullVAELib.implant.shapemodel import fit_shape_model, save_shape_model
from SkullVAELib.models.card import DISCLAIMER, LICENCES, data_source

SKULLFIX = "SkullFix (Kodym et al., Data in Brief 35, 106902, 2021; skulls from CQ500 head CTs)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bank", type=Path, help="shapes.safetensors written by `skullvae build-shapes`")
    p.add_argument("out", type=Path, help="the shape model to write")
    p.add_argument("--modes", type=int, default=10, help="principal modes kept (default 10)")
    p.add_argument("--ridge", type=float, default=1e-3, help="the modes' ridge penalty (default 1e-3)")
    p.add_argument("--source", default=SKULLFIX, help="the data set the bank's skulls come from (the card)")
    p.add_argument("--licence", default=None, help="the licence the model inherits (the card; default: the data's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model at OUT")
    args = p.parse_args()
    try:
        if args.out.exists() and not args.overwrite:
            raise SkullVAEError("a shape model is there already (--overwrite replaces it)", args.out)
        bank = load_shape_bank(args.bank)
        model = fit_shape_model(bank, args.modes, args.ridge)
    except SkullVAEError as exc:
        print(f"make_shape_model.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
    model.card = {  # the model cards' vocabulary (models.card): licence by data source, disclaimer
        "trained_on": f"{len(bank)} complete skulls, case ids {format_id_spec(bank.ids)}, of {args.source}",
        "licence": args.licence or LICENCES[data_source([args.source], list(bank.ids))],
        "disclaimer": DISCLAIMER,
    }
    save_shape_model(model, args.out)
    print(f"wrote a shape model of {model.n_skulls} skulls, {len(model.modes)} modes, {int(model.rays.sum())} rays")


if __name__ == "__main__":
    main()
