"""Figures of :mod:`SkullVAELib.evaluation.figures` that no report test draws."""

from __future__ import annotations

import numpy as np

from SkullVAELib.evaluation.figures import plot_estimate_scatter


def test_the_estimate_scatter_draws_one_panel_per_split(tmp_path):
    rng = np.random.default_rng(0)

    def rows(n):
        dsc = rng.uniform(0.8, 0.97, n)
        styles = ("cranial", "vault", "irregular")
        return [{"estimate": d + rng.normal(0, 0.02), "dsc": d, "defect": styles[i % 3]} for i, d in enumerate(dsc)]

    png = plot_estimate_scatter({"validation": rows(20), "test": rows(30)}, tmp_path / "scatter.png")
    from matplotlib.image import imread

    height, width = imread(png).shape[:2]
    assert width > 1.8 * height  # two panels side by side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scatter.png"]  # written whole, no temporary left
