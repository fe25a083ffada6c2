"""Projections of a bool volume along its voxel axes (numpy only; figures draw them).

Three views, as every figure and preview shows them: axial (from above, face at the top),
coronal (from the front, patient left on the right of the picture) and sagittal (from the
patient's left, face on the left). Pixel aspect follows the voxel spacing; oblique images
are shown in index space. Engines (evaluation) may compute views; only
:mod:`SkullVAELib.evaluation.figures` draws them.
"""

from __future__ import annotations

import numpy as np

# (projected axis, horizontal axis, vertical axis, image origin, title)
VIEWS = (
    (2, 0, 1, "upper", "axial (from above)"),
    (1, 0, 2, "lower", "coronal (from the front)"),
    (0, 1, 2, "lower", "sagittal (from the left)"),
)


def xray_projection(mask: np.ndarray, axis: int) -> np.ndarray:
    """(A, B) float32 in [0, 1]: bone path length along ``axis`` (scaled to its 99th percentile,
    with a gamma that lifts thin bone). Shows orbits and holes that a maximum projection hides."""
    path = mask.sum(axis=axis, dtype=np.float32)
    peak = float(np.percentile(path[path > 0], 99)) if np.any(path > 0) else 1.0
    return np.clip(path / max(peak, 1.0), 0.0, 1.0) ** 0.6


def orthogonal_views(
    bone: np.ndarray, pred: np.ndarray | None, gt: np.ndarray | None, spacing, mode: str = "xray"
) -> list[dict]:
    """Three projections of bone (grey) with predicted / true implant footprints.

    Args:
        bone, pred, gt: bool (I, J, K) on one grid (pred/gt may be None).
        spacing: (3,) mm.
        mode: "xray" (bone path length, shows orbits and holes) or "max" (the silhouette).

    Returns: one dict per view: ``grey`` (V, H) float32, ``pred``/``gt`` (V, H) bool or
    None, ``extent`` (width, height) in mm, ``origin`` ("upper"/"lower"), ``title``.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    views = []
    for proj, h, v, origin, title in VIEWS:
        grey = bone.any(axis=proj).astype(np.float32) if mode == "max" else xray_projection(bone, proj)
        views.append(
            {
                "grey": grey.T,
                "pred": None if pred is None else pred.any(axis=proj).T,
                "gt": None if gt is None else gt.any(axis=proj).T,
                "extent": (float(bone.shape[h] * spacing[h]), float(bone.shape[v] * spacing[v])),
                "origin": origin,
                "title": title,
            }
        )
    return views
