"""The γ-sweep montage (like the paper's Figure 5): columns = γ, rows = orthogonal views.

Each panel is an x-ray-like projection (bone path length along the view axis) of the
completed skull, with the implant drawn in yellow. Views run along the voxel axes
(i, j, k); pixel aspect follows the spacing. ``preview.save_mip_png`` puts one image per
row with the views as columns; the paper's figure wants γ along the columns, hence this file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from SkullVAELib.atomic import atomic_path
from SkullVAELib.image import SkullImage
from SkullVAELib.preview import xray_projection

# (projected axis, horizontal axis, vertical axis, flip vertical, name)
_VIEWS = ((0, 1, 2, False, "from the left"), (1, 0, 2, False, "from the front"), (2, 0, 1, True, "from above"))
_YELLOW = np.array([1.0, 0.85, 0.0])


def _panel(completed: np.ndarray, implant: np.ndarray, axis: int) -> np.ndarray:
    """RGB (V, H, 3) of one view: grey bone path length, implant in yellow."""
    grey = xray_projection(completed, axis)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    hit = implant.any(axis=axis)
    rgb[hit] = 0.3 * rgb[hit] + 0.7 * _YELLOW
    return np.transpose(rgb, (1, 0, 2))  # (H, V) -> (V, H)


def save_gamma_sweep_png(
    gammas: Sequence[float],
    completed: Sequence[SkullImage],
    implants: Sequence[SkullImage],
    path: str | os.PathLike,
    title: str = "",
    dpi: int = 80,
) -> None:
    """Write the montage PNG (atomic): one column per γ, three view rows."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    n = len(gammas)
    fig = Figure(figsize=(2.6 * n + 0.6, 7.4))
    axes = fig.subplots(len(_VIEWS), n, squeeze=False)
    for col, (gamma, skull, implant) in enumerate(zip(gammas, completed, implants, strict=True)):
        for row, (axis, h, v, flip, name) in enumerate(_VIEWS):
            ax = axes[row, col]
            extent = (0, skull.shape[h] * skull.spacing[h], 0, skull.shape[v] * skull.spacing[v])
            ax.imshow(
                _panel(skull.mask, implant.mask, axis),
                origin="upper" if flip else "lower",
                extent=extent,
                interpolation="nearest",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"γ = {gamma:g}", fontsize=10)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", facecolor="white")
