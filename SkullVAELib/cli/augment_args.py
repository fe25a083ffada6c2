"""`skullvae train --augment ...`: the options of training-time augmentation (``SkullVAELib.data.augment``)."""

from __future__ import annotations

import argparse

from SkullVAELib.cli.common import float_list_arg, seed_arg
from SkullVAELib.core.errors import SkullVAEError


def add_augment_args(p: argparse.ArgumentParser) -> None:
    """--augment and its settings (an argument group of ``train``)."""
    g = p.add_argument_group("augmentation (every batch, on the training device; SkullVAELib.data.augment)")
    g.add_argument(
        "--augment",
        action="store_true",
        help="mirror left-right, random rigid/affine (mm, degrees) and elastic transforms, fresh defects",
    )
    g.add_argument(
        "--augment-defects",
        type=float_list_arg,
        default=[0.3, 0.1],
        metavar="PC,PF",
        help="probabilities of a fresh cranial and facial defect per sample (default 0.3,0.1; 0,0 = none)",
    )
    g.add_argument(
        "--augment-target",
        choices=("complete", "input"),
        default="complete",
        help="target of a freshly cut sample: the skull before the cut (complete: the VAE learns completion, "
        "default) or the defective input itself (input: every input reconstructs itself, as the paper trains)",
    )
    g.add_argument(
        "--augment-spacing",
        type=float_list_arg,
        default=None,
        metavar="X,Y,Z",
        help="model-grid voxel size in mm for the mm/degree ranges (default: SkullFix's 230x230x190 mm / grid)",
    )
    g.add_argument(
        "--augment-seed", type=seed_arg, default=0, help="augmentation seed (with the trainer's per-epoch seeds)"
    )


def augment_settings(args: argparse.Namespace) -> dict | None:
    """The ``augment.AugmentConfig`` fields of ``--augment`` (checked by the workflow), or None."""
    if not getattr(args, "augment", False):
        return None
    if len(args.augment_defects) != 2:
        raise SkullVAEError(f"--augment-defects takes two probabilities PC,PF, got {args.augment_defects}")
    if args.augment_spacing is not None and len(args.augment_spacing) != 3:
        raise SkullVAEError(f"--augment-spacing takes three sizes X,Y,Z in mm, got {args.augment_spacing}")
    return {
        "spacing_mm": tuple(args.augment_spacing) if args.augment_spacing else None,
        "p_cranial": args.augment_defects[0],
        "p_facial": args.augment_defects[1],
        "defect_target": args.augment_target,
        "seed": args.augment_seed,
    }
