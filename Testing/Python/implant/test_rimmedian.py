"""The rim fit's fill as a median over rim widths (``RimFitConfig.fill_rings``, :mod:`rimmedian`)."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.implant.rimconfig import Hole, RimFitConfig
from SkullVAELib.implant.rimfit import rim_fit
from SkullVAELib.implant.rimmedian import median_fill, ring_widths


def test_the_default_fill_is_a_median_over_three_ring_widths():
    assert ring_widths(RimFitConfig()) == (6, 9, 12)


def test_the_configured_ring_is_filled_last_and_a_ring_inside_its_inner_edge_is_refused():
    assert ring_widths(RimFitConfig(ring=(3, 12), fill_rings=(12, 6, 9, 6))) == (6, 9, 12)
    assert ring_widths(RimFitConfig(ring=(3, 12), fill_rings=(14, 8))) == (8, 14, 12)
    with pytest.raises(ValueError, match="inner edge"):
        ring_widths(RimFitConfig(ring=(3, 12), fill_rings=(3, 9)))
    with pytest.raises(ValueError, match="cells"):
        RimFitConfig(fill_rings=(0,))


def test_each_ray_keeps_the_median_fill_where_most_fills_cover_it():
    """Three fills (rings to 6, 9, 12 cells) whose outer radius grows with the ring: per ray the middle
    one's radii survive; a ray only one fill covers is not filled."""
    shape = (4, 5)
    widths_seen, holes_seen = [], []

    def fill(raymap, hole, cfg, mirror, shapes):
        width = cfg.ring[1]
        widths_seen.append(width)
        holes_seen.append(hole)
        hole.rim_thickness_mm = float(width)  # a fill sets its hole's rim measures
        region = np.zeros(shape, dtype=bool)
        region[:2] = True
        if width == 6:
            region[3, 0] = True  # this fill alone reaches a ray
        r_out = np.where(region, 50.0 + width, np.nan).astype(np.float32)
        return region, (r_out - 6.0).astype(np.float32), r_out

    hole = Hole(np.ones(shape, dtype=bool), 0.1, np.array([0.0, 0.0, 1.0]))
    region, r_in, r_out = median_fill(None, hole, RimFitConfig(ring=(3, 12), fill_rings=(6, 9)), None, None, fill)
    assert widths_seen == [6, 9, 12]
    assert holes_seen[-1] is hole and all(h is not hole for h in holes_seen[:-1])
    assert hole.rim_thickness_mm == 12.0, "the hole reports the configured ring's measures"
    assert region[:2].all() and not region[2:].any()
    np.testing.assert_allclose(r_out[:2], 59.0)
    np.testing.assert_allclose(r_in[:2], 53.0)
    assert np.isnan(r_out[3, 0])


@pytest.fixture(scope="module")
def vault_case():
    """A SkullBreak-style defect on a phantom's vault (96×96×72 voxels of 2.2 mm): (defective, truth)."""
    return cranial_defect(make_phantom(1, (96, 96, 72), (2.2, 2.2, 2.2)), 1, style="skullbreak")


def test_the_median_fill_is_the_voxel_majority_of_the_fills_and_leaves_the_bone_alone(vault_case):
    defective, truth = vault_case
    before = defective.mask.copy()
    plain = {"grow_mm": 0.0}  # growing uses the ring too: held off, so each member fills the same hole
    members = [rim_fit(defective, RimFitConfig(ring=(3, w), fill_rings=(), **plain)).implant for w in (6, 9, 12)]
    median = rim_fit(defective, RimFitConfig(ring=(3, 12), fill_rings=(6, 9, 12), **plain)).implant
    assert np.array_equal(defective.mask, before), "the patient's bone was modified"
    assert median.any() and not (median & defective.mask).any()
    majority = np.sum(members, axis=0) >= 2
    assert dice(median, majority) >= 0.98
    assert dice(median, truth.mask) >= 0.8
    only = rim_fit(defective, RimFitConfig(ring=(3, 12), fill_rings=(12,), **plain)).implant
    assert np.array_equal(only, members[-1]), "a median over the ring alone is the plain fill"
