"""`skullvae import-reference`: the authors' published .pth weights -> a model bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from SkullVAELib.cli.common import add_overwrite_arg, grid_arg, non_negative_float


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import-reference",
        help="convert the authors' published weights (.pth state dicts) into a model bundle",
        description=(
            "Convert the paper's published weights (Jianningli/skullVAE: a MONAI VarAutoEncoder, "
            "and optionally the retrained decoder) into a SkullVAE model bundle. Files are read "
            "with torch.load(weights_only=True); nothing is unpickled. The bundle has no class "
            "centroids until `skullvae fit-completion` runs on data."
        ),
    )
    parser.add_argument("--vae", required=True, type=Path, help="the VAE state dict (β = 1e-4 or β = 100)")
    parser.add_argument(
        "--decoder", type=Path, help="the retrained (decoupled) decoder state dict: makes an aggregated VAE"
    )
    parser.add_argument("--out", required=True, type=Path, help="model bundle folder to write")
    parser.add_argument(
        "--grid",
        type=grid_arg,
        default=None,
        help="model grid X,Y,Z (default: 256,256,128 when the weights fit it, else inferred)",
    )
    parser.add_argument(
        "--beta", type=non_negative_float, default=None, help="the β the VAE was trained with (recorded only)"
    )
    add_overwrite_arg(parser, "replace a model bundle already in --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.workflows import import_reference_model

    bundle = import_reference_model(args.vae, args.out, args.decoder, args.grid, args.beta, overwrite=args.overwrite)
    net = bundle.network
    print(
        f"wrote {bundle.kind} model {args.out} (grid {'x'.join(map(str, net.grid))}, channels "
        f"{list(net.channels)}, latent {net.latent_size}); next: skullvae fit-completion --model {args.out}"
    )
    return 0
