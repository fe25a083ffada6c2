"""Helpers shared by the CLI verbs: argument types and progress choice."""

from __future__ import annotations

import argparse

from SkullVAELib.progress import JsonLinesProgress, TqdmProgress


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


def float_list_arg(text: str) -> list[float]:
    """Parse "0,0.5,1" into floats, for argparse ``type=`` (γ sweeps)."""
    try:
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}") from None


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
