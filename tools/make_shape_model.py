"""Fit the shape model the rim fit looks for (SkullVAELib/implant/shape_model.safetensors) from a shape bank.

Usage::

    skullvae build-shapes --data $SF --train-ids 000-055 --out BANK
    .venv/bin/python tools/make_shape_model.py BANK/shapes.safetensors SkullVAELib/implant/shape_model.safetensors

The bank (every training skull's ray map) stays private; the model keeps the mean shape, the first
10 principal modes and the mean thickness (docs/RESULTS.md, "A shape model as the default cue").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.implant.shapebank import load_shape_bank
from SkullVAELib.implant.shapemodel import fit_shape_model, save_shape_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bank", type=Path, help="shapes.safetensors written by `skullvae build-shapes`")
    p.add_argument("out", type=Path, help="the shape model to write")
    p.add_argument("--modes", type=int, default=10, help="principal modes kept (default 10)")
    p.add_argument("--ridge", type=float, default=1e-3, help="the modes' ridge penalty (default 1e-3)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model at OUT")
    args = p.parse_args()
    try:
        if args.out.exists() and not args.overwrite:
            raise SkullVAEError("a shape model is there already (--overwrite replaces it)", args.out)
        model = fit_shape_model(load_shape_bank(args.bank), args.modes, args.ridge)
    except SkullVAEError as exc:
        print(f"make_shape_model.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
    save_shape_model(model, args.out)
    print(f"wrote a shape model of {model.n_skulls} skulls, {len(model.modes)} modes, {int(model.rays.sum())} rays")


if __name__ == "__main__":
    main()
