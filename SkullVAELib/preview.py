"""Orthogonal projection previews of skull masks as a PNG (matplotlib, Agg backend).

One row per image, three columns: axial (from above, face at the top), coronal (from
the front, patient left on the right of the picture) and sagittal (from the patient's
left, face on the left). Projections run along the voxel axes (i, j, k); an optional
overlay mask (e.g. an implant) is drawn in yellow over the bone. Pixel aspect follows the
voxel spacing. Oblique images are shown in index space.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from SkullVAELib.atomic import atomic_path
from SkullVAELib.errors import SkullVAEError
from SkullVAELib.image import SkullImage

# (projected axis, horizontal axis, vertical axis, vertical axis increasing downward, title)
_VIEWS = (
    (2, 0, 1, True, "axial (from above)"),
    (1, 0, 2, False, "coronal (from the front)"),
    (0, 1, 2, False, "sagittal (from the left)"),
)
_YELLOW = np.array([1.0, 0.85, 0.0])


def xray_projection(mask: np.ndarray, axis: int) -> np.ndarray:
    """(A, B) float32 in [0, 1]: bone path length along ``axis`` (scaled to its 99th percentile,
    with a gamma that lifts thin bone). Shows orbits and holes that a maximum projection hides."""
    path = mask.sum(axis=axis, dtype=np.float32)
    peak = float(np.percentile(path[path > 0], 99)) if np.any(path > 0) else 1.0
    return np.clip(path / max(peak, 1.0), 0.0, 1.0) ** 0.6


def _project(mask: np.ndarray, axis: int, mode: str) -> np.ndarray:
    """(A, B) image in [0, 1] of a bool volume projected along ``axis``."""
    if mode == "max":
        return mask.any(axis=axis).astype(np.float32)
    return xray_projection(mask, axis)


def _normalise_items(images) -> list[tuple[str, SkullImage, np.ndarray | None]]:
    items = []
    for n, item in enumerate(images):
        if isinstance(item, SkullImage):
            title, image, overlay = str(item.metadata.get("title", f"image {n}")), item, None
        else:
            title, image, overlay = item
        if overlay is not None:
            overlay = overlay.mask if isinstance(overlay, SkullImage) else np.asarray(overlay, dtype=bool)
            if overlay.shape != image.shape:
                raise SkullVAEError(f"overlay shape {overlay.shape} != image shape {image.shape} for {title!r}")
        items.append((title, image, overlay))
    return items


def save_mip_png(
    images: Sequence[SkullImage] | Sequence[tuple[str, SkullImage, SkullImage | np.ndarray | None]],
    path: str | os.PathLike,
    mode: str = "xray",
    dpi: int = 90,
) -> None:
    """Write a PNG of three orthogonal projections of each image (one row each).

    Args:
        images: SkullImages, or (title, image, overlay) with overlay a bool (I, J, K) array or
            SkullImage on the same grid (drawn in yellow: the implant), or None.
        path: the PNG to write (atomically).
        mode: "xray" (bone path length, shows orbits and holes) or "max" (binary maximum
            intensity projection, the silhouette).
        dpi: resolution of the figure.
    """
    if mode not in ("xray", "max"):
        raise SkullVAEError(f"preview mode must be 'xray' or 'max', got {mode!r}")
    items = _normalise_items(images)
    if not items:
        raise SkullVAEError("nothing to preview: no images given", path)

    # A bare Figure renders with the Agg canvas and leaves pyplot's backend alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.4 * len(items)))
    axes = fig.subplots(len(items), 3, squeeze=False)
    for row, (title, image, overlay) in enumerate(items):
        for col, (proj, h, v, downward, view) in enumerate(_VIEWS):
            grey = _project(image.mask, proj, mode).T  # (V, H)
            rgb = np.repeat(grey[..., None], 3, axis=2)
            if overlay is not None:
                hit = overlay.any(axis=proj).T
                rgb[hit] = 0.25 * rgb[hit] + 0.75 * _YELLOW
            extent_h = image.shape[h] * image.spacing[h]
            extent_v = image.shape[v] * image.spacing[v]
            ax = axes[row, col]
            ax.imshow(
                rgb, origin="upper" if downward else "lower", extent=(0, extent_h, 0, extent_v), interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title}: {view}" if col == 0 else view, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", facecolor="white")
