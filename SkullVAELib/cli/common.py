"""Helpers shared by the CLI verbs: argument types, shared options and the progress choice."""

from __future__ import annotations

import argparse
import math
import os
import sys

from SkullVAELib.core.config import PRESETS, RESAMPLE_MODES, NetworkConfig, check_ema_decay, check_gamma, network_preset
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import JsonLinesProgress, TqdmProgress


def grid_arg(text: str) -> tuple[int, int, int]:
    """Parse "X,Y,Z" (or "XxYxZ") into a grid tuple, for argparse ``type=``."""
    parts = text.replace("x", ",").split(",")
    try:
        grid = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid must be three integers like 128,128,64, got {text!r}") from None
    if len(grid) != 3 or min(grid) <= 0:
        raise argparse.ArgumentTypeError(f"grid must be three positive integers, got {text!r}")
    return grid  # type: ignore[return-value]


SEED_LIMIT = 2**64  # seeds are 0 .. 2**64 - 1 (torch.manual_seed's and NumPy's range)


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """A finite number (no nan, inf, 1e400), for argparse ``type=``."""
    return _number(text, "a finite number")


def positive_float(text: str) -> float:
    """A finite number > 0, for argparse ``type=``."""
    value = _number(text, "a finite number > 0")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0, for argparse ``type=``."""
    value = _number(text, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _integer(text: str, low: int, high: int | None, what: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1, for argparse ``type=``."""
    return _integer(text, 1, None, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """An integer >= 0, for argparse ``type=``."""
    return _integer(text, 0, None, "an integer >= 0")


def seed_arg(text: str) -> int:
    """A seed: an integer in 0 .. 2**64 - 1, for argparse ``type=``."""
    return _integer(text, 0, SEED_LIMIT - 1, "an integer in 0..2**64-1")


def threads_arg(text: str) -> int:
    """A thread count >= 0 (0 = the library's default), capped at this machine's CPU count, for argparse ``type=``."""
    return min(_integer(text, 0, None, "an integer >= 0"), os.cpu_count() or 1)


def float_list_arg(text: str) -> list[float]:
    """Parse "0,0.5,1" into finite floats, for argparse ``type=`` (γ sweeps)."""
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def gamma_list(text: str, option: str = "--gamma") -> list[float]:
    """ "1" or "0,0.5,1" -> valid γ values (``config.check_gamma``); a one-line SkullVAEError otherwise."""
    try:
        values = float_list_arg(str(text))
        if not values:
            raise SkullVAEError("empty")
        return [check_gamma(v) for v in values]
    except (argparse.ArgumentTypeError, SkullVAEError) as exc:
        detail = str(exc) if isinstance(exc, SkullVAEError) and str(exc) != "empty" else None
        raise SkullVAEError(
            f"{option} must be a number or comma-separated numbers, got {text!r}" + (f" ({detail})" if detail else "")
        ) from None


def gammas_arg(text: str) -> list[float]:
    """:func:`gamma_list` for argparse ``type=``."""
    try:
        return gamma_list(text, "γ")
    except SkullVAEError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_resample_arg(
    parser: argparse.ArgumentParser,
    default: str | None = None,
    default_help: str = "the mode the model was trained with",
) -> None:
    """``--resample area|nearest``; ``default`` None means ``default_help`` (decided by the workflow)."""
    parser.add_argument(
        "--resample",
        choices=RESAMPLE_MODES,
        default=default,
        help="grid resampling: area (soft occupancy, accurate) or nearest (the paper's resizing); default: "
        + (default or default_help),
    )


def add_network_args(parser: argparse.ArgumentParser, architecture: bool = True) -> None:
    """``--preset`` and ``--grid`` (and ``--channels``, ``--latent`` with ``architecture``), as ``train`` has."""
    parser.add_argument("--preset", default="paper", help="network preset: " + ", ".join(PRESETS))
    parser.add_argument("--grid", type=grid_arg, default=None, help="model grid X,Y,Z (overrides the preset)")
    if architecture:
        parser.add_argument("--channels", default=None, help="encoder channels, e.g. 32,64,64,128,128,256")
        parser.add_argument("--latent", type=positive_int, default=None, help="latent size d (preset default 32)")


def network_from_args(args: argparse.Namespace) -> NetworkConfig:
    """The NetworkConfig of ``--preset`` with ``--grid`` / ``--channels`` / ``--latent`` applied (validated)."""
    base = network_preset(args.preset)
    channels = base.channels
    if getattr(args, "channels", None):
        try:
            channels = tuple(int(c) for c in args.channels.split(","))
        except ValueError:
            raise SkullVAEError(f"--channels must be comma-separated integers, got {args.channels!r}") from None
    grid = args.grid or base.grid
    try:
        return NetworkConfig(
            grid=grid, channels=channels, latent_size=getattr(args, "latent", None) or base.latent_size
        )
    except SkullVAEError as exc:
        if "cannot be divided" not in exc.message:
            raise
        from SkullVAELib.vae.plan import grid_advice

        raise SkullVAEError(f"{exc.message.split('; ')[0]}: {grid_advice(grid, channels)}") from None


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        choices=("tqdm", "json", "none"),
        default="tqdm",
        help="progress display: tqdm bars on stderr, JSON lines on stdout (for Slicer), or none",
    )


def make_progress(kind: str):
    """The progress callback for ``--progress KIND``."""
    if kind == "json":
        return JsonLinesProgress()
    return TqdmProgress(disable=(kind == "none"))


def make_log(kind: str):
    """Where a verb's informational lines go: stdout, or stderr under ``--progress json`` (stdout then
    carries only JSON progress objects, one per line, for programs such as the Slicer module)."""
    if kind == "json":
        return lambda message: print(message, file=sys.stderr, flush=True)
    return print


def close_progress(progress) -> None:
    """Close a progress display (tqdm bars) if it has anything to close."""
    if hasattr(progress, "close"):
        progress.close()


def add_rim_fit_cue_args(group) -> None:
    """``--mirror/--no-mirror`` and ``--shapes/--no-shapes``: the rim fit's cues (complete, evaluate)."""
    group.add_argument(
        "--mirror",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let the rim fit use the skull's mirror image where it covers the hole",
    )
    group.add_argument(
        "--shapes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="where the mirror does not cover a hole, let the rim fit follow the model folder's shape bank "
        "(shapes.safetensors) or else the installed shape model (tools/make_shape_model.py)",
    )


def add_overwrite_arg(parser: argparse.ArgumentParser, help: str) -> None:
    """``--overwrite``: replace what is already at the destination."""
    parser.add_argument("--overwrite", action="store_true", help=help)


def parse_integers(text: str, option: str) -> tuple[int, ...]:
    """ "16,32,64" -> (16, 32, 64); a one-line error naming ``option`` otherwise."""
    from SkullVAELib.core.errors import SkullVAEError

    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SkullVAEError(f"{option} must be comma-separated integers, got {text!r}") from None


def ema_arg(text: str) -> float:
    """A weight-average decay in [0, 1) (0: none), for argparse ``type=``."""
    try:
        return check_ema_decay(float(text), "--")
    except (ValueError, SkullVAEError) as error:
        raise argparse.ArgumentTypeError(f"expected a decay in [0, 1), e.g. 0.999, not {text!r}") from error


def add_step_optimiser_args(parser: argparse.ArgumentParser) -> None:
    """``--weight-decay`` and ``--ema DECAY`` of the learned sources' trainers (AdamW, a moving
    average of the weights that validation scores and the kept weights are)."""
    parser.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=1e-5,
        help="AdamW's decoupled weight decay (default 1e-5)",
    )
    parser.add_argument(
        "--ema",
        type=ema_arg,
        default=0.0,
        metavar="DECAY",
        help="keep a moving average of the weights with this decay (e.g. 0.999: about the last 1000 steps); "
        "validation scores it and the kept weights are the average's (default 0: none)",
    )


def step_training_settings(args: argparse.Namespace) -> dict:
    """The settings every step trainer's config takes from its flags (``--steps``, ``--minutes``,
    ``--batch``, ``--lr``, ``--lr-schedule``, ``--val-every``, ``--precision``, ``--weight-decay``,
    ``--ema``, ``--seed``), as keyword arguments."""
    names = ("steps", "batch", "lr", "lr_schedule", "val_every", "precision", "weight_decay", "ema", "seed")
    return {"seconds": args.minutes * 60, **{name: getattr(args, name) for name in names}}
