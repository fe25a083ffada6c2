"""The options that build a :class:`~SkullVAELib.pipeline.settings.CompletionSettings`, shared by
``skullvae complete`` and ``skullvae evaluate --implants`` (one spelling of every switch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from SkullVAELib.cli.common import (
    add_resample_arg,
    add_rim_fit_cue_args,
    finite_float,
    non_negative_float,
    non_negative_int,
    seed_arg,
)
from SkullVAELib.core.config import (
    DEFECT_CHOICES,
    DEVICE_HELP,
    IMPLANT_SOURCES,
    INFERENCE_PRECISIONS,
    CompletionConfig,
)
from SkullVAELib.core.errors import SkullVAEError


def source_list(text: str) -> tuple[str, ...]:
    """ "rimfit,learned" -> ("rimfit", "learned"), checked by the pipeline's own rule (known, none twice)."""
    from SkullVAELib.pipeline.settings import check_sources

    try:
        return check_sources(w.strip() for w in text.split(",") if w.strip())
    except SkullVAEError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, --refiner, --residual, --atlas: where the trained parts come from (all optional)."""
    p.add_argument(
        "--model",
        default=None,
        help="model folder or installed model name (optional: without one, cranial defects take the rim fit)",
    )
    p.add_argument(
        "--refiner",
        type=Path,
        action="append",
        default=None,
        metavar="FILE",
        help="learned facial refiner file (skullvae train-refiner; default MODEL/refiner*.safetensors when there "
        "is one); give it several times for an ensemble (the members' probabilities averaged)",
    )
    p.add_argument(
        "--residual",
        type=Path,
        action="append",
        default=None,
        metavar="FILE",
        help="learned cranial residual file (skullvae train-residual; default MODEL/residual*.safetensors when "
        "there is one); give it several times for an ensemble (the members' shifts averaged)",
    )
    p.add_argument(
        "--atlas",
        type=Path,
        default=None,
        metavar="DIR",
        help="atlas set folder (skullvae build-atlas; default MODEL/atlas when there is one)",
    )


def add_completion_args(p: argparse.ArgumentParser) -> None:
    """The implant sources and the model's settings."""
    g = p.add_argument_group("implant sources (tried in order; the first that applies and proposes bone is kept)")
    g.add_argument(
        "--sources",
        type=source_list,
        default=IMPLANT_SOURCES,
        metavar="LIST",
        help=f"comma-separated order of implant sources (default {','.join(IMPLANT_SOURCES)}): rimfit = fitted to "
        "the defect's rim (cranial, no model), learned = the facial U-Net (--refiner), atlas = registered "
        "training skulls (--atlas), model = the β-VAE's latent arithmetic z + γ·DEV (--model)",
    )
    add_rim_fit_cue_args(g)
    g.add_argument(
        "--quality",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score each implant's agreement with the defect's rim (in the result) and pass over failed ones",
    )
    g.add_argument(
        "--self-check",
        action="store_true",
        help="try the rim fit on the hole's outline moved over the skull's intact vault and report the DSC it "
        "scored there (in the result; about 1.5 s more)",
    )
    g.add_argument(
        "--defect",
        choices=DEFECT_CHOICES,
        default="auto",
        help="the defect: auto = an enclosed vault hole is cranial (or one outside the vault that the rim fit "
        "closes as a vault defect: a pitched head), otherwise the model's classifier (or, without a model, facial)",
    )
    f = p.add_argument_group("finishing for manufacture (every source; 0 = off)")
    f.add_argument(
        "--smooth-mm",
        type=float,
        default=0.0,
        metavar="MM",
        help="smooth the implant's surface (Gaussian σ in mm, implant and bone as one solid: the edge stays on the rim)",
    )
    f.add_argument(
        "--margin-mm",
        type=float,
        default=0.0,
        metavar="MM",
        help="leave at least this gap between the implant's and the bone's voxel faces",
    )
    f.add_argument(
        "--min-thickness-mm", type=float, default=0.0, metavar="MM", help="remove implant parts thinner than this"
    )
    m = p.add_argument_group("the model source (--model)")
    m.add_argument(
        "--threshold", type=finite_float, default=0.5, help="bone probability threshold of the decoded skull"
    )
    m.add_argument(
        "--min-island", type=non_negative_float, default=100.0, help="drop model-implant pieces smaller than this (mm³)"
    )
    m.add_argument(
        "--max-distance",
        type=non_negative_float,
        default=10.0,
        help="model-implant pieces must touch the skull within (mm)",
    )
    add_resample_arg(m)
    m.add_argument(
        "--fit-steps",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="test-time fit: N Adam steps fitting the "
        "latent code to the patient's own bone before the latent shift (0 = off, the paper)",
    )
    m.add_argument("--seed", type=seed_arg, default=0, help="seed of the uncertainty samples")
    m.add_argument("--device", default="auto", help=DEVICE_HELP)
    m.add_argument(
        "--precision",
        choices=INFERENCE_PRECISIONS,
        default="float32",
        help="network arithmetic: float32 (exact) or bfloat16 (faster on CPUs with bf16 units and GPUs)",
    )


def completion_settings(args: argparse.Namespace, gamma: float = 1.0, samples: int = 0, raw: bool = False):
    """The :class:`CompletionSettings` of parsed :func:`add_model_args` + :func:`add_completion_args` options."""
    import dataclasses

    from SkullVAELib.models.store import resolve_model
    from SkullVAELib.pipeline.settings import (
        AtlasSettings,
        CompletionSettings,
        FinishSettings,
        LearnedSettings,
        ResidualSettings,
        RimFitSettings,
    )

    model = resolve_model(args.model) if args.model else None
    vae = CompletionConfig(
        gamma=gamma,
        keep_patient_bone=not raw,
        threshold=args.threshold,
        min_island_mm3=args.min_island,
        max_distance_mm=args.max_distance,
        uncertainty_samples=samples,
        resample=args.resample,
        seed=args.seed,
        fit_steps=args.fit_steps,
    )
    given = [flag for flag, on in (("--raw", raw), ("--uncertainty", samples > 0)) if on]
    if given and model is None:  # name only the flags the user gave
        raise SkullVAEError(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} a trained model (--model)")
    return CompletionSettings(
        model=model,
        sources=args.sources,
        defect=args.defect,
        vae=vae,
        rimfit=dataclasses.replace(
            RimFitSettings(), mirror=args.mirror, shapes=args.shapes, self_check=args.self_check
        ),
        learned=LearnedSettings(args.refiner),
        residual=ResidualSettings(args.residual),
        atlas=AtlasSettings(args.atlas),
        finish=FinishSettings(args.smooth_mm, args.margin_mm, args.min_thickness_mm),
        quality=args.quality,
        device=args.device,
        precision=args.precision,
    )
