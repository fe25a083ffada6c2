"""The rim fit's fill as the median of fills from rims of several widths (``RimFitConfig.fill_rings``).

A thin-plate spline continued across a hole is only as good as the ring of rim rays it is fitted
on: a narrow ring follows the bone right at the hole (and its local bumps), a wide one the vault's
trend (and bone farther from the hole that may curve away). Each width misses some holes by a
millimetre or more; which one, the rim does not tell (validation, docs/results/issue-24-2026-12-06.md, "A median over
rim widths"). So the hole is filled once per width, and per ray the median of the filled outer and
inner radii is kept where most fills cover the ray. Along one ray, the voxels a majority of the
fills cover are those between the median inner and the median outer radius (the fills overlap: a
shell's thickness is several times their spread), so this is the fills' voxel-wise majority vote,
rasterised once.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import copy
from dataclasses import replace

import numpy as np

from SkullVAELib.implant.raycast import RayMap
from SkullVAELib.implant.rimconfig import Hole, RimFitConfig

__all__ = ["median_fill", "ring_widths"]

Fill = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]


def ring_widths(cfg: RimFitConfig) -> tuple[int, ...]:
    """The rings' outer edges (cells) the fill takes its median over: ``cfg.fill_rings``, sorted, and
    ``cfg.ring``'s own always, last (the hole's reported rim thickness, area and source are that ring's)."""
    if any(outer <= cfg.ring[0] for outer in cfg.fill_rings):
        raise ValueError(f"fill_rings must reach past the ring's inner edge ({cfg.ring[0]} cells): {cfg.fill_rings}")
    others = sorted(set(cfg.fill_rings) - {cfg.ring[1]})
    return (*others, cfg.ring[1])


def median_fill(
    raymap: RayMap, hole: Hole, cfg: RimFitConfig, mirror: RayMap | None, shapes, fill: Fill
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(region, r_in, r_out) as ``fill`` (:func:`rimfit.fill_hole`) returns them: bool (Nα, Nβ) rays to
    rasterise and their radii (mm, NaN elsewhere), the per-ray median over one fill per ring width of
    :func:`ring_widths`; a ray is filled where more than half of the fills fill it. ``shapes``: the
    shape bank or model handed on to ``fill`` (or None).

    ``fill`` is passed in (not imported) so that this module stays below :mod:`rimfit`. One width
    (``fill_rings`` empty or the ring's own): that ring's fill, as ``fill`` returns it."""
    widths = ring_widths(cfg)
    if len(widths) == 1:
        return fill(raymap, hole, cfg, mirror, shapes)
    regions, inner, outer = [], [], []
    for width in widths:
        member = hole if width == cfg.ring[1] else copy(hole)  # a fill sets the hole's rim measures
        region, r_in, r_out = fill(raymap, member, replace(cfg, ring=(cfg.ring[0], width)), mirror, shapes)
        regions.append(region)
        inner.append(np.where(region, r_in, np.nan))
        outer.append(np.where(region, r_out, np.nan))
    votes = np.sum(regions, axis=0)
    region = votes * 2 > len(regions)
    r_in = np.full(region.shape, np.nan, dtype=np.float32)
    r_out = np.full(region.shape, np.nan, dtype=np.float32)
    r_in[region] = np.nanmedian(np.stack(inner)[:, region], axis=0)
    r_out[region] = np.nanmedian(np.stack(outer)[:, region], axis=0)
    return region & (r_out > r_in), r_in, r_out
