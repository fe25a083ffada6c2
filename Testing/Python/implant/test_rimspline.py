"""Continuing the rim across a hole (rimspline): the projection, the rim's splines, the mirror's share."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import RBFInterpolator

from SkullVAELib.implant.rimspline import fit_rim_splines, gnomonic, mirror_thickness_weight


def test_the_gnomonic_projection_puts_the_centre_at_the_origin_and_keeps_great_circles_straight():
    centre = np.array([0.0, 0.6, 0.8])
    assert np.allclose(gnomonic(centre[None], centre), 0.0)
    # points on one great circle through the centre project onto one line through the origin
    other = np.array([1.0, 0.0, 0.0])
    angles = np.deg2rad([-40.0, -10.0, 20.0, 60.0])
    arc = np.cos(angles)[:, None] * centre + np.sin(angles)[:, None] * other
    xy = gnomonic(arc, centre)
    assert np.linalg.matrix_rank(xy - xy.mean(axis=0), tol=1e-9) == 1
    # and the distance from the origin is tan(angle)
    np.testing.assert_allclose(np.linalg.norm(xy, axis=1), np.abs(np.tan(angles)), rtol=1e-12)


@pytest.mark.parametrize("smoothing, degree", [((0.01, 0.01), (2, 2)), ((0.01, 0.5), (2, 1))])
def test_the_two_rim_splines_in_one_interpolator_fit_like_two(smoothing, degree):
    """Outer radius and thickness share one thin-plate interpolator when their settings agree (the
    default), and get one each when they differ: the same values either way."""
    rng = np.random.default_rng(0)
    rim, fill = rng.normal(size=(200, 2)), rng.normal(size=(500, 2))
    outer, thick = rng.normal(80.0, 2.0, 200), rng.normal(6.0, 1.0, 200)
    got_outer, got_thick = fit_rim_splines(rim, outer, thick, fill, smoothing, degree)
    kw = {"kernel": "thin_plate_spline"}
    want_outer = RBFInterpolator(rim, outer, smoothing=smoothing[0], degree=degree[0], **kw)(fill)
    want_thick = RBFInterpolator(rim, thick, smoothing=smoothing[1], degree=degree[1], **kw)(fill)
    np.testing.assert_allclose(got_outer, want_outer, rtol=0, atol=1e-8)
    np.testing.assert_allclose(got_thick, want_thick, rtol=0, atol=1e-8)


def test_the_mirror_thickness_is_followed_as_far_as_the_rim_confirms_it():
    """The share is the rim's least-squares slope on the mirror's thickness, clipped to [0, 1]."""
    rng = np.random.default_rng(1)
    mirrored = rng.normal(7.0, 1.5, 400)
    noise = rng.normal(0.0, 0.3, 400)
    assert mirror_thickness_weight(mirrored + 0.5 + noise, mirrored) == pytest.approx(1.0, abs=0.05)
    assert mirror_thickness_weight(0.4 * mirrored + noise, mirrored) == pytest.approx(0.4, abs=0.05)
    unrelated = rng.normal(7.0, 1.5, 400)  # the mirror tells nothing about this rim
    assert mirror_thickness_weight(unrelated, mirrored) == pytest.approx(0.0, abs=0.1)
    assert mirror_thickness_weight(14.0 - mirrored, mirrored) == 0.0  # opposite: clipped, never negative
    assert mirror_thickness_weight(3.0 * mirrored, mirrored) == 1.0  # never more than the mirror itself


def test_a_fixed_share_wins_and_a_flat_or_missing_mirror_gives_none():
    thick = np.linspace(5.0, 9.0, 50)
    assert mirror_thickness_weight(thick, thick, fixed=0.25) == 0.25
    assert mirror_thickness_weight(thick, np.full(50, 7.0)) == 0.0  # no variation to explain anything
    mirrored = thick.copy()
    mirrored[::5] = np.nan  # rays the mirror does not reach are left out, not propagated
    assert mirror_thickness_weight(thick, mirrored) == pytest.approx(1.0)
