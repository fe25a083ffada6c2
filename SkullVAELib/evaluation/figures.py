"""Every figure of SkullVAE, one function each: a new figure goes here (matplotlib, Agg canvas).

- Fig. 3 :func:`plot_curves`: training curves from ``training_log.csv`` files.
- Fig. 4 :func:`plot_latent_pca`: PCA of the latent codes (μ, or μ + σ where the decoder reads that) by class, centroids, DEV arrows.
- Fig. 5 :func:`plot_gamma_sweep`: completions for several γ (report and ``complete --gamma`` sweeps).
- Fig. 6 :func:`plot_dsc_boxplots`: REC and CMP DSC per class.
- Figs. 7–8 :func:`plot_completion_views`: defective bone grey, predicted implant yellow,
  ground-truth implant outlined in cyan, three orthogonal projections.
- :func:`save_mip_png`: previews, one row per image (demo, quick looks).
- :func:`plot_estimate_scatter`: an estimate of each implant's DSC against its true DSC, one panel per
  split (the rim fit's self-check, ``benchmarks/rimfit_cases.py --plot``).

Figures are bare ``matplotlib.figure.Figure`` objects saved through the Agg canvas (``_subplots``,
the one backend setup): pyplot's global backend is never touched, so a caller's interactive
session keeps its own. Views are computed by :mod:`SkullVAELib.evaluation.views` (numpy only, usable by
engines); this module only draws. Every PNG is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from SkullVAELib.core.atomic import atomic_path
from SkullVAELib.core.config import COMPLETE, DEFECTS
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.evaluation.views import VIEWS, orthogonal_views, xray_projection
from SkullVAELib.io.image import SkullImage
from SkullVAELib.training.log import read_log

__all__ = [
    "CLASS_COLORS",
    "VIEWS",
    "orthogonal_views",
    "plot_completion_views",
    "plot_curves",
    "plot_dsc_boxplots",
    "plot_estimate_scatter",
    "plot_gamma_sweep",
    "plot_latent_pca",
    "save_mip_png",
    "sweep_rows",
    "xray_projection",
]

CLASS_COLORS = {"complete": "tab:green", "cranial": "tab:blue", "facial": "tab:orange"}
_YELLOW = np.array([1.0, 0.85, 0.0])


def _subplots(rows: int, cols: int, figsize: tuple[float, float]):
    """(figure, axes (rows, cols)) on the Agg canvas, without pyplot's global state."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", facecolor="white")
    return path


def _draw_view(ax, view: dict, title: str | None = None, fontsize: int = 8) -> None:
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
    ax.set_title(title or view["title"], fontsize=fontsize)


def plot_completion_views(examples: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path | None:
    """Figs. 7–8: one row per example (``case_id``, ``label``, ``views``), three views each.

    Grey: defective bone; yellow: predicted implant; cyan outline: ground-truth implant.
    Returns None when there is nothing to draw.
    """
    if not examples:
        return None
    fig, axes = _subplots(len(examples), 3, figsize=(10, 3.3 * len(examples)))
    for row, ex in enumerate(examples):
        for col, view in enumerate(ex["views"]):
            name = f"{ex['label']} {ex['case_id']}: {view['title']}" if col == 0 else None
            _draw_view(axes[row, col], view, name)
    fig.suptitle(
        title or "completions (grey: defective bone, yellow: predicted implant, cyan: true implant)", fontsize=10
    )
    fig.tight_layout()
    return _save(fig, path)


def plot_gamma_sweep(rows: Sequence[dict], path: str | os.PathLike, title: str = "", dpi: int = 100) -> Path | None:
    """Fig. 5, the one γ-sweep figure: ``rows`` of {"title", "panels": [(γ, view dict)]}; one column per γ.

    Each view (see :func:`views.orthogonal_views`) shows a skull (grey) and the implant at
    that γ (yellow). The evaluation report puts one test case per row; ``skullvae complete
    --gamma 0,0.5,1`` puts the three views of its input in the rows (:func:`sweep_rows`).
    """
    rows = [r for r in rows if r["panels"]]
    if not rows:
        return None
    ncol = max(len(r["panels"]) for r in rows)
    fig, axes = _subplots(len(rows), ncol, figsize=(2.3 * ncol, 2.6 * len(rows)))
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
    fig.suptitle(title or "γ sweep: decode(μ + γ·DEV) (grey), implant (yellow)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def sweep_rows(gammas: Sequence[float], skulls: Sequence[SkullImage], implants: Sequence[SkullImage]) -> list[dict]:
    """Rows of :func:`plot_gamma_sweep` for one input: one row per view, one column per γ."""
    per_gamma = [orthogonal_views(s.mask, i.mask, None, s.spacing) for s, i in zip(skulls, implants, strict=True)]
    return [
        {"title": view["title"], "panels": [(float(g), views[n]) for g, views in zip(gammas, per_gamma, strict=True)]}
        for n, view in enumerate(per_gamma[0] if per_gamma else [])
    ]


def plot_dsc_boxplots(rows: Sequence[dict], path: str | os.PathLike, where: str = "original") -> Path | None:
    """Fig. 6: box plots of REC DSC (cranial, facial, complete) and CMP DSC (cranial, facial).

    ``where``: "original" (original resolution) or "model" (model grid) columns of the rows.
    """
    groups = []
    for kind, labels in (("rec", (*DEFECTS, COMPLETE)), ("cmp", DEFECTS)):
        for label in labels:
            vals = [r[f"{kind}_dsc_{where}"] for r in rows if r["label"] == label]
            vals = [v for v in vals if v is not None and np.isfinite(v)]
            if vals:
                groups.append((f"{kind.upper()}\n{label}", vals, CLASS_COLORS[label]))
    if not groups:
        return None
    fig, axes = _subplots(1, 1, figsize=(1.3 * len(groups) + 2, 4))
    ax = axes[0, 0]
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


def plot_estimate_scatter(panels: dict[str, Sequence[dict]], path: str | os.PathLike, what: str = "estimate") -> Path:
    """One panel per split (``panels``: title → rows with "estimate", "dsc" and "defect"): the estimate
    against the true DSC, a point per implant coloured by defect style, the line y = x, Spearman's ρ in
    the title."""
    from scipy import stats

    fig, axes = _subplots(1, len(panels), (4.2 * len(panels), 4.2))
    colours = {"cranial": "tab:blue", "vault": "tab:green", "irregular": "tab:orange"}
    for ax, (title, rows) in zip(axes[0], panels.items(), strict=True):
        est = np.array([r["estimate"] for r in rows], dtype=float)
        dsc = np.array([r["dsc"] for r in rows], dtype=float)
        for defect in sorted({r["defect"] for r in rows}):
            mine = np.array([r["defect"] == defect for r in rows])
            ax.scatter(dsc[mine], est[mine], s=12, color=colours.get(defect, "tab:grey"), label=defect)
        low = float(min(est.min(), dsc.min())) - 0.01
        ax.plot([low, 1.0], [low, 1.0], color="black", linewidth=0.6)
        rho = stats.spearmanr(est, dsc).statistic if len(rows) > 2 else float("nan")
        ax.set_title(f"{title} (n = {len(rows)}, ρ = {rho:+.2f})", fontsize=9)
        ax.set_xlabel("true implant DSC")
        ax.set_ylabel(what)
        ax.legend(fontsize=7, loc="lower right")
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
    fig, axes = _subplots(1, 1, figsize=(6.5, 5.5))
    ax = axes[0, 0]
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
        title="PCA of the latent codes: classes, centroids (★) and DEV vectors (red)",
    )
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


# --- Fig. 3: training curves ---------------------------------------------------------------------
def _runs(rows: Sequence[dict[str, float]]) -> dict[tuple[int, float], list[dict[str, float]]]:
    runs: dict[tuple[int, float], list[dict[str, float]]] = {}
    for row in rows:
        runs.setdefault((int(row["stage"]), float(row.get("beta", 0.0))), []).append(row)
    return runs


def plot_curves(logs: Sequence[str | os.PathLike], png_path: str | os.PathLike) -> Path | None:
    """Figure 3 of the paper from one or more training logs (e.g. the β = 100 and β = 1e-4 bundles).

    Left: the Dice loss of every stage-1 run and of the stage-2 (decoupled) decoder.
    Right: the stage-1 KLD; the largest-β run on the left y-axis and the smallest-β run on a
    second y-axis (their scales differ by orders of magnitude). Returns the PNG path, or
    None when the logs hold no rows.
    """
    rows: list[dict[str, float]] = []
    for log in logs:
        rows += read_log(log)
    runs = _runs(rows)
    if not runs:
        return None
    fig, axes = _subplots(1, 2, figsize=(11, 4))
    ax_dice, ax_kld = axes[0]
    for (stage, beta), run in sorted(runs.items()):
        label = "decoupled decoder (stage 2)" if stage == 2 else f"VAE β = {beta:g}"
        ax_dice.plot([r["epoch"] for r in run], [r["dice"] for r in run], label=label)
    ax_dice.set(xlabel="epoch", ylabel="Dice loss (×80, per batch)", title="Dice")
    ax_dice.legend()
    stage1 = sorted((beta, run) for (stage, beta), run in runs.items() if stage == 1)
    if stage1:
        kld_axes = [ax_kld] if len(stage1) == 1 else [ax_kld, ax_kld.twinx()]
        picks = [stage1[-1]] if len(stage1) == 1 else [stage1[-1], stage1[0]]
        for ax, (beta, run), color in zip(kld_axes, picks, ("tab:red", "tab:blue"), strict=False):
            ax.plot([r["epoch"] for r in run], [r["kld"] for r in run], color=color, label=f"β = {beta:g}")
            ax.set_ylabel(f"KLD (β = {beta:g})", color=color)
            ax.tick_params(axis="y", colors=color)
    ax_kld.set(xlabel="epoch", title="KLD")
    fig.tight_layout()
    return _save(fig, png_path, dpi=120)


# --- previews ------------------------------------------------------------------------------------
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
) -> Path:
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
    fig, axes = _subplots(len(items), 3, figsize=(11, 3.4 * len(items)))
    for row, (title, image, overlay) in enumerate(items):
        views = orthogonal_views(image.mask, overlay, None, image.spacing, mode=mode)
        for col, view in enumerate(views):
            _draw_view(axes[row, col], view, f"{title}: {view['title']}" if col == 0 else None, fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi)
