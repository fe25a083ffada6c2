"""The evaluation figures (matplotlib, Agg backend only), one function per figure.

- Fig. 4 :func:`plot_latent_pca`: PCA of μ by class, centroids, DEV arrows.
- Fig. 5 :func:`plot_gamma_sweep`: completions for γ = 0 … 1.5.
- Fig. 6 :func:`plot_dsc_boxplots`: REC and CMP DSC per class.
- Figs. 7–8 :func:`plot_completion_views`: defective bone grey, predicted implant yellow,
  ground-truth implant outlined in cyan, three orthogonal projections.
(Fig. 3, the training curves, is :func:`SkullVAELib.curves.plot_curves`.)

Views are projections along the voxel axes, as in ``preview``: axial from above,
coronal from the front, sagittal from the left; pixel aspect follows the spacing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from SkullVAELib.atomic import atomic_path
from SkullVAELib.preview import xray_projection

CLASS_COLORS = {"complete": "tab:green", "cranial": "tab:blue", "facial": "tab:orange"}
_YELLOW = np.array([1.0, 0.85, 0.0])
# (projected axis, horizontal axis, vertical axis, image origin, title); see preview._VIEWS
VIEWS = (
    (2, 0, 1, "upper", "axial (from above)"),
    (1, 0, 2, "lower", "coronal (from the front)"),
    (0, 1, 2, "lower", "sagittal (from the left)"),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", facecolor="white")
    _pyplot().close(fig)
    return path


def orthogonal_views(bone: np.ndarray, pred: np.ndarray | None, gt: np.ndarray | None, spacing) -> list[dict]:
    """Three projections of bone (grey) with predicted / true implant footprints.

    Args:
        bone, pred, gt: bool (I, J, K) on one grid (pred/gt may be None).
        spacing: (3,) mm.

    Returns: one dict per view: ``grey`` (V, H) float32, ``pred``/``gt`` (V, H) bool or
    None, ``extent`` (width, height) in mm, ``origin`` ("upper"/"lower"), ``title``.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    views = []
    for proj, h, v, origin, title in VIEWS:
        views.append(
            {
                "grey": xray_projection(bone, proj).T,
                "pred": None if pred is None else pred.any(axis=proj).T,
                "gt": None if gt is None else gt.any(axis=proj).T,
                "extent": (float(bone.shape[h] * spacing[h]), float(bone.shape[v] * spacing[v])),
                "origin": origin,
                "title": title,
            }
        )
    return views


def _draw_view(ax, view: dict, title: str | None = None) -> None:
    rgb = np.repeat(view["grey"][..., None], 3, axis=2)
    if view.get("pred") is not None:
        hit = view["pred"]
        rgb[hit] = 0.25 * rgb[hit] + 0.75 * _YELLOW
    w, h = view["extent"]
    ax.imshow(rgb, origin=view["origin"], extent=(0, w, 0, h), interpolation="nearest")
    if view.get("gt") is not None and view["gt"].any():
        ax.contour(
            view["gt"].astype(np.float32),
            levels=[0.5],
            colors="cyan",
            linewidths=0.8,
            origin=view["origin"],
            extent=(0, w, 0, h),
        )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or view["title"], fontsize=8)


def plot_completion_views(examples: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path | None:
    """Figs. 7–8: one row per example (``case_id``, ``label``, ``views``), three views each.

    Grey: defective bone; yellow: predicted implant; cyan outline: ground-truth implant.
    Returns None when there is nothing to draw.
    """
    if not examples:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(examples), 3, figsize=(10, 3.3 * len(examples)), squeeze=False)
    for row, ex in enumerate(examples):
        for col, view in enumerate(ex["views"]):
            name = f"{ex['label']} {ex['case_id']}: {view['title']}" if col == 0 else None
            _draw_view(axes[row, col], view, name)
    fig.suptitle(
        title or "completions (grey: defective bone, yellow: predicted implant, cyan: true implant)", fontsize=10
    )
    fig.tight_layout()
    return _save(fig, path)


def plot_gamma_sweep(rows: Sequence[dict], path: str | os.PathLike) -> Path | None:
    """Fig. 5: ``rows`` of {"title", "panels": [(γ, view dict)]}; one column per γ.

    Each view shows the decoded skull (grey) and the implant at that γ (yellow).
    """
    rows = [r for r in rows if r["panels"]]
    if not rows:
        return None
    plt = _pyplot()
    ncol = max(len(r["panels"]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.3 * ncol, 2.6 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(ncol):
            ax = axes[i, j]
            if j >= len(row["panels"]):
                ax.axis("off")
                continue
            gamma, view = row["panels"][j]
            _draw_view(ax, view, f"γ = {gamma:g}")
            if j == 0:
                ax.set_ylabel(row["title"], fontsize=8)
    fig.suptitle("γ sweep: decode(μ + γ·DEV) (grey), implant (yellow)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_dsc_boxplots(rows: Sequence[dict], path: str | os.PathLike, where: str = "original") -> Path | None:
    """Fig. 6: box plots of REC DSC (cranial, facial, complete) and CMP DSC (cranial, facial).

    ``where``: "original" (original resolution) or "model" (model grid) columns of the rows.
    """
    groups = []
    for kind, labels in (("rec", ("cranial", "facial", "complete")), ("cmp", ("cranial", "facial"))):
        for label in labels:
            vals = [r[f"{kind}_dsc_{where}"] for r in rows if r["label"] == label]
            vals = [v for v in vals if v is not None and np.isfinite(v)]
            if vals:
                groups.append((f"{kind.upper()}\n{label}", vals, CLASS_COLORS[label]))
    if not groups:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.3 * len(groups) + 2, 4))
    box = ax.boxplot([g[1] for g in groups], patch_artist=True, showmeans=True)
    ax.set_xticks(range(1, len(groups) + 1), [g[0] for g in groups])
    for patch, (_, _, color) in zip(box["boxes"], groups, strict=True):
        patch.set_facecolor(color)
        patch.set_alpha(0.5)
    ax.set_ylabel("DSC")
    ax.set_title(f"DSC on the test cases ({'original resolution' if where == 'original' else 'model grid'})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_latent_pca(latents: dict, centroids: dict | None, path: str | os.PathLike) -> Path | None:
    """Fig. 4: μ projected on its first two principal components, coloured by class.

    ``latents``: {"train"?: {...}, "test": {"mu" (N, d), "labels"}}; PCA is fitted on the
    training μ when present (else the test μ). Big markers: class centroids; arrows: the
    latent origin → each centroid (black) and each defect centroid → the complete
    centroid (the DEV vectors, red).
    """
    from sklearn.decomposition import PCA

    fit_on = latents.get("train") or latents.get("test")
    if fit_on is None or len(fit_on["mu"]) < 2 or np.asarray(fit_on["mu"]).shape[1] < 2:
        return None
    pca = PCA(n_components=2).fit(np.asarray(fit_on["mu"], dtype=np.float64))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for split, marker, alpha in (("train", "o", 0.35), ("test", "^", 0.9)):
        part = latents.get(split)
        if not part:
            continue
        xy = pca.transform(np.asarray(part["mu"], dtype=np.float64))
        labels = np.asarray(part["labels"])
        for label, color in CLASS_COLORS.items():
            sel = labels == label
            if sel.any():
                ax.scatter(
                    xy[sel, 0], xy[sel, 1], s=14, marker=marker, color=color, alpha=alpha, label=f"{label} ({split})"
                )
    origin = pca.transform(np.zeros((1, pca.n_features_in_)))[0]
    if centroids:
        pts = {k: pca.transform(np.asarray(v, dtype=np.float64)[None])[0] for k, v in centroids.items()}
        for label, p in pts.items():
            ax.scatter(*p, s=160, marker="*", color=CLASS_COLORS.get(label, "k"), edgecolor="k", zorder=5)
            ax.annotate("", xy=p, xytext=origin, arrowprops={"arrowstyle": "->", "color": "k", "lw": 1})
        if "complete" in pts:
            for label, p in pts.items():
                if label != "complete":
                    ax.annotate(
                        "", xy=pts["complete"], xytext=p, arrowprops={"arrowstyle": "->", "color": "red", "lw": 1.8}
                    )
                    mid = (p + pts["complete"]) / 2
                    ax.text(mid[0], mid[1], f"DEV_{label[:2]}", color="red", fontsize=8)
    ax.scatter(*origin, marker="+", s=80, color="k", label="latent origin")
    ratio = pca.explained_variance_ratio_
    ax.set(
        xlabel=f"PC 1 ({100 * ratio[0]:.0f} %)",
        ylabel=f"PC 2 ({100 * ratio[1]:.0f} %)",
        title="PCA of μ: classes, centroids (★) and DEV vectors (red)",
    )
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)
