"""Deprecated alias (kept for one release): the γ-sweep figure is :func:`SkullVAELib.figures.plot_gamma_sweep`."""

from __future__ import annotations

import os
from collections.abc import Sequence

from SkullVAELib.figures import plot_gamma_sweep, sweep_rows
from SkullVAELib.image import SkullImage


def save_gamma_sweep_png(
    gammas: Sequence[float],
    completed: Sequence[SkullImage],
    implants: Sequence[SkullImage],
    path: str | os.PathLike,
    title: str = "",
    dpi: int = 80,
) -> None:
    """Write the montage PNG: one column per γ, three view rows (see ``figures.sweep_rows``)."""
    plot_gamma_sweep(sweep_rows(gammas, completed, implants), path, title=title, dpi=dpi)
