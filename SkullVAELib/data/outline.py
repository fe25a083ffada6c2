"""The irregular cranial outline (style "irregular" of :mod:`.recipes`): drawn once, evaluated in numpy or torch.

In the tangent frame at the vault site (a, b along the surface, d along the outward normal) the hole
is a star-shaped closed curve cut through the bone along the normal, like the SkullFix box
(``cut_mm``). After a turn by ``turn`` and a stretch by ``elongation`` (√e along one axis, 1/√e
along the other: the area is kept), a point at polar angle θ and distance ρ is inside when

    ρ ≤ R · clip(1 + Σₖ cₖ cos(k θ − φₖ), outline_clip),   k = 2 … K,

with R in ``outline_radius_mm``, K in ``outline_orders`` and cₖ in ``outline_amplitude`` divided by
√(k / 2) (higher orders wiggle less), clipped to ``outline_clip`` (low, high): no lobe shrinks to
a thread or reaches past 1.5 R. Order 1 would only move the hole, so the sum starts at 2.

One drawing (:func:`draw_outline`, pure Python over a ``uniform(low, high)`` callable) serves both
generators: :mod:`.defects` draws with its numpy generator, :mod:`.regions` with its torch one, and
:func:`irregular_inside` evaluates the same formula with either array module (``xp``), so the
same outline cuts the same bone in both. This module imports neither numpy nor torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from SkullVAELib.data.recipes import CranialRecipe


@dataclass(frozen=True)
class Outline:
    """One drawn irregular outline: mean radius (mm), stretch, turn (rad) and (order, amplitude, phase) terms."""

    radius_mm: float
    elongation: float
    turn: float
    terms: tuple[tuple[int, float, float], ...]


def draw_outline(uniform: Callable[[float, float], float], recipe: CranialRecipe) -> Outline:
    """An :class:`Outline` from ``recipe``'s ranges; ``uniform(low, high)`` gives one uniform draw.

    Draw order: radius, elongation, turn, highest order K, then per order its amplitude and phase.
    """
    radius = uniform(*recipe.outline_radius_mm)
    elongation = uniform(*recipe.outline_elongation)
    turn = uniform(0.0, math.pi)
    low, high = recipe.outline_orders
    top = min(high, low + int((high - low + 1) * uniform(0.0, 1.0)))
    terms = []
    for order in range(2, top + 1):
        amplitude = uniform(*recipe.outline_amplitude) / math.sqrt(order / 2.0)
        terms.append((order, amplitude, uniform(0.0, 2.0 * math.pi)))
    return Outline(radius, elongation, turn, tuple(terms))


def irregular_inside(a, b, d, outline: Outline, recipe: CranialRecipe, xp):
    """bool array: the points (a, b, d) of the tangent frame inside the hole cut along the normal.

    ``xp``: the array module of ``a``, ``b``, ``d`` (numpy or torch); they broadcast together.
    """
    c, s, root = math.cos(outline.turn), math.sin(outline.turn), math.sqrt(outline.elongation)
    u = (a * c + b * s) / root
    v = (b * c - a * s) * root
    theta = xp.arctan2(v, u)
    wiggle = 1.0 + 0.0 * theta
    for order, amplitude, phase in outline.terms:
        wiggle = wiggle + amplitude * xp.cos(order * theta - phase)
    reach = outline.radius_mm * wiggle.clip(min=recipe.outline_clip[0], max=recipe.outline_clip[1])
    return (xp.hypot(u, v) <= reach) & (d >= recipe.cut_mm[0]) & (d <= recipe.cut_mm[1])
