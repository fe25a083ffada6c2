"""The geometric implant stage (issue 9): ray maps, rim fit, symmetry plane, sanity checks.

Phantoms at 96×96×72 voxels of 2.2 mm keep every fit around 2 s on one core.
"""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.metrics import dice, implant_metrics
from SkullVAELib.implant import raycast
from SkullVAELib.implant.check import check_implant
from SkullVAELib.implant.rimfit import Hole, RimFitConfig, rim_fit
from SkullVAELib.io.image import SkullImage, read_skull
from SkullVAELib.pipeline.completer import Completer
from SkullVAELib.pipeline.settings import CompletionSettings, RimFitSettings

SHAPE, SPACING = (96, 96, 72), (2.2, 2.2, 2.2)


@pytest.fixture(scope="module")
def phantom() -> SkullImage:
    return make_phantom(1, SHAPE, SPACING)


@pytest.fixture(scope="module")
def vault_case(phantom):
    """A SkullBreak-style defect on the vault of the phantom: (defective, true implant)."""
    return cranial_defect(phantom, 1, style="skullbreak")


def _shell(direction: np.ndarray) -> SkullImage:
    """A spherical shell (inner radius 50 mm, outer 56 mm) about LPS (3, -2, 5) on an oblique grid."""
    spacing = np.array([1.5, 1.5, 1.8])
    shape = (90, 90, 80)
    centre = np.array([3.0, -2.0, 5.0])
    # origin so that the grid centre lands on the shell centre
    origin = centre - direction @ (spacing * (np.array(shape) - 1) / 2.0)
    idx = np.indices(shape).reshape(3, -1).T
    pts = idx * spacing @ direction.T + origin
    r = np.linalg.norm(pts - centre, axis=1).reshape(shape)
    return SkullImage((r >= 50.0) & (r <= 56.0), origin, spacing, direction)


@pytest.mark.parametrize("tilt_deg", [0.0, 17.0])
def test_ray_map_measures_the_shell_radii_on_any_grid_direction(tilt_deg):
    t = np.deg2rad(tilt_deg)
    direction = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(t), -np.sin(t)], [0.0, np.sin(t), np.cos(t)]])
    shell = _shell(direction)
    rays = raycast.cast(shell, centre=np.array([3.0, -2.0, 5.0]), step_deg=3.0)
    assert rays.hit.all()
    tol = 1.0 + 0.5 * 1.8  # half a voxel diagonal-ish plus the radial step
    assert np.abs(rays.r_out - 56.0).max() < tol
    assert np.abs(rays.r_in - 50.0).max() < tol
    assert abs(np.median(rays.thickness) - 6.0) < 1.0


def test_mirroring_is_beta_negation():
    alpha, beta = raycast.angle_grid(2.0)
    u = raycast.directions(alpha[:, None], beta[None, :])
    mirrored = raycast.directions(alpha[:, None], -beta[None, :])
    np.testing.assert_allclose(mirrored[..., 0], -u[..., 0], atol=1e-12)
    np.testing.assert_allclose(mirrored[..., 1:], u[..., 1:], atol=1e-12)
    r, a, b = raycast.to_angles(u * 7.0)
    np.testing.assert_allclose(r, 7.0)
    np.testing.assert_allclose(a, np.broadcast_to(alpha[:, None], a.shape), atol=1e-9)


def test_rim_fit_fills_a_known_vault_hole_and_never_touches_the_bone(vault_case):
    defective, truth = vault_case
    before = defective.mask.copy()
    result = rim_fit(defective)
    assert np.array_equal(defective.mask, before), "the patient's bone was modified"
    assert not (result.implant & defective.mask).any(), "the implant overlaps the patient's bone"
    assert len(result.holes) == 1
    m = implant_metrics(result.implant, truth.mask, defective.mask, defective.spacing)
    assert m["dsc"] >= 0.80, m
    assert m["hd95"] <= 3 * max(SPACING), m
    # the completed skull is close to the complete phantom
    assert dice(defective.mask | result.implant, defective.mask | truth.mask) >= 0.97
    assert check_implant(result.implant, defective.voxel_volume_mm3, result.holes) == []
    assert list(result.timings) == ["raycast", "holes", "mirror_raycast", "fill", "postprocess"]
    assert all(seconds >= 0.0 for seconds in result.timings.values())


def test_a_complete_skull_gets_an_empty_implant_with_a_clear_message(phantom):
    refined = Completer(CompletionSettings(defect="cranial", rimfit=RimFitSettings(mirror=False))).complete(phantom)
    assert not refined.implant.mask.any()
    assert refined.source == "none"
    assert any("no enclosed hole" in m for m in refined.warnings)


def test_implausible_volume_is_flagged():
    hole = Hole(np.zeros((2, 2), dtype=bool), 0.5, np.array([0.0, 0.0, 1.0]), expected_volume_mm3=20_000.0)
    implant = np.zeros((40, 40, 40), dtype=bool)
    implant[:10, :10, :10] = True  # 1000 voxels of 1 mm³: 5 % of the hole's volume
    (message,) = check_implant(implant, 1.0, [hole])
    assert "implausible" in message and "0.05x" in message
    implant[:] = True  # 64 000 mm³: 3.2x
    assert "implausible" in check_implant(implant, 1.0, [hole])[0]
    implant[:] = False
    implant[:20, :20, :50] = True  # 20 000 mm³: as expected
    assert check_implant(implant, 1.0, [hole]) == []
    assert "empty" in check_implant(np.zeros_like(implant), 1.0, [hole])[0]


def test_an_expected_volume_from_elsewhere_replaces_the_holes():
    """The atlas implant has no rim-fit hole: its own estimate of the needed volume is checked."""
    implant = np.zeros((40, 40, 40), dtype=bool)
    implant[:10, :10, :10] = True  # 1000 mm³
    assert check_implant(implant, 1.0, expected_mm3=1100.0) == []
    (message,) = check_implant(implant, 1.0, expected_mm3=5000.0)
    assert "implausible" in message and "0.20x" in message
    assert check_implant(implant, 1.0, expected_mm3=float("nan")) == []  # no estimate: nothing to compare


def test_mirror_plane_of_a_shifted_phantom(phantom):
    from SkullVAELib.implant.symmetry import find_mirror_plane

    shifted = SkullImage(phantom.mask, phantom.origin + np.array([7.0, 0.0, 0.0]), phantom.spacing)
    plane = find_mirror_plane(shifted)
    assert abs(plane.normal[0]) > 0.995
    # the phantom is symmetric about its own x = 0, i.e. x = 7 mm after the shift
    assert abs(plane.point[0] - 7.0) < 2.0
    t = plane.transform()
    np.testing.assert_allclose(t @ t, np.eye(4), atol=1e-9)  # a reflection is its own inverse


@pytest.mark.skullfix
def test_rim_fit_on_a_real_skullfix_case(skullfix_dir):
    """Validation case 056 (never used for anything but validation): anchor-level implant."""
    defective = read_skull(skullfix_dir / "defective_skull" / "056.nrrd", kind="binary")
    truth = read_skull(skullfix_dir / "implant" / "056.nrrd", kind="binary")
    refined = Completer(CompletionSettings(rimfit=RimFitSettings(mirror=False))).complete(defective)
    assert refined.source == "rimfit"
    m = implant_metrics(refined.implant.mask, truth.mask, defective.mask, defective.spacing)
    assert m["dsc"] >= 0.85 and m["bdsc"] >= 0.90 and m["hd95"] <= 3.0, m
    assert refined.warnings == []


def test_a_hole_at_the_back_of_the_vault_is_a_hole(phantom):
    """A defect around the horizontal backward ray from the cranial centre (the ray grid's posterior
    pole: a vault defect of a scan tilted backwards reaches it, SkullFix training case 009) is
    enclosed by bone and filled; before, touching that pole counted as open to the outside."""
    centre = raycast.cranial_centre(phantom)
    index = np.indices(phantom.shape).reshape(3, -1).T
    points = index @ (phantom.direction @ np.diag(phantom.spacing)).T + phantom.origin
    ray_map = raycast.cast(phantom, centre, 1.0)
    back = centre + np.array([0.0, 1.0, 0.0]) * float(np.nanmedian(ray_map.r_out[:3]))
    region = (np.linalg.norm(points - back, axis=1) <= 28.0).reshape(phantom.shape)
    defective = phantom.with_mask(phantom.mask & ~region)
    truth = phantom.mask & region
    as_cast = rim_fit(defective, RimFitConfig(pole_clearance_deg=0.0))
    assert len(as_cast.holes) == 1, as_cast.messages
    assert as_cast.holes[0].cells[0].any()  # the hole holds the posterior pole
    turned = rim_fit(defective)  # the default: filled in a frame turned upwards off the pole (gridturn)
    assert turned.turn is not None and len(turned.holes) == 1, turned.messages
    for result in (as_cast, turned):
        assert dice(result.implant, truth) >= 0.75
        assert not (result.implant & defective.mask).any()


@pytest.fixture(scope="module")
def grown_hole(vault_case):
    """(ray map, the mirror's ray map, the phantom's vault hole grown once) on a 1° grid."""
    from SkullVAELib.implant.rimfit import RimFitConfig, grow_hole
    from SkullVAELib.implant.rimholes import find_holes
    from SkullVAELib.implant.symmetry import find_mirror_plane

    defective, _ = vault_case
    transform = find_mirror_plane(defective).transform()
    centre = raycast.cranial_centre(defective)
    raymap = raycast.cast(defective, centre, 1.0)
    mirror = raycast.cast(defective, centre, 1.0, transform=transform)
    hole = find_holes(raymap)[0]
    grow_hole(raymap, hole, RimFitConfig())
    return raymap, mirror, hole


@pytest.fixture(scope="module")
def mirror_fill(grown_hole):
    """fill(with_mirror=True, cue=None, **RimFitConfig fields) -> (source, region, r_in, r_out) of the
    phantom's grown vault hole, filled afresh each call with its mirror cue (or ``cue`` in its place),
    or with none."""
    from SkullVAELib.implant.rimfit import RimFitConfig, fill_hole

    raymap, mirror, hole = grown_hole

    def fill(with_mirror: bool = True, cue=None, **settings):
        cells = Hole(hole.cells.copy(), hole.solid_angle_sr, hole.direction)
        given = (mirror if cue is None else cue) if with_mirror else None
        region, r_in, r_out = fill_hole(raymap, cells, RimFitConfig(**settings), given)
        return cells.source, region, r_in, r_out

    return fill


def test_the_mirror_share_shrinks_the_mirror_fill_towards_the_plain_spline(mirror_fill):
    """share 1: the mirror-cued fill; 0: the plain spline of the same rim; between: their weighted mean,
    the outer radius and the thickness alike (the bone's inner surface follows)."""

    def fill(share: float, with_mirror: bool = True):
        return mirror_fill(with_mirror, mirror_share=share)

    source, region, in_1, out_1 = fill(1.0)
    assert source == "mirror+spline", "the phantom's hole must take the mirror cue"
    *_, in_0, out_0 = fill(0.0)
    _, plain_region, plain_in, plain_out = fill(1.0, with_mirror=False)
    _, _, in_h, out_h = fill(0.3)
    assert region.any() and not np.allclose(out_1[region], out_0[region])  # the mirror changes the surface
    np.testing.assert_allclose(out_0[region], plain_out[region], atol=1e-4)  # share 0: the plain spline
    np.testing.assert_allclose(in_0[region], plain_in[region], atol=1e-4)
    np.testing.assert_allclose(out_h[region], 0.3 * out_1[region] + 0.7 * out_0[region], atol=1e-4)
    thick_1, thick_0, thick_h = out_1 - in_1, out_0 - in_0, out_h - in_h
    np.testing.assert_allclose(thick_h[region], 0.3 * thick_1[region] + 0.7 * thick_0[region], atol=1e-3)


def test_the_mirror_fills_thickness_stays_within_the_cap_of_the_plain_spline(mirror_fill):
    """``mirror_thickness_cap_mm``: where the mirror-cued thickness differs from the plain rim spline's by
    more than the cap it is held at the cap, elsewhere it is the mirror fill's; the outer radius is
    the mirror fill's throughout; 0 turns the cap off."""
    source, region, in_m, out_m = mirror_fill(mirror_thickness_cap_mm=0.0)
    assert source == "mirror+spline"
    _, _, in_p, out_p = mirror_fill(with_mirror=False)
    thick_m, thick_p = (out_m - in_m)[region], (out_p - in_p)[region]
    cap = float(np.quantile(np.abs(thick_m - thick_p), 0.5))  # binds on half the rays
    assert cap > 0.05
    _, region_c, in_c, out_c = mirror_fill(mirror_thickness_cap_mm=cap)
    assert np.array_equal(region_c, region)
    np.testing.assert_allclose(out_c[region], out_m[region], atol=1e-5)  # the surface is the mirror's
    thick_c = (out_c - in_c)[region]
    assert np.abs(thick_c - thick_p).max() <= cap + 1e-4
    within = np.abs(thick_m - thick_p) <= cap
    np.testing.assert_allclose(thick_c[within], thick_m[within], atol=1e-4)
    assert not np.allclose(thick_c[~within], thick_m[~within], atol=1e-3)


def test_where_the_mirror_has_a_gap_of_its_own_the_hole_takes_the_plain_spline(grown_hole, mirror_fill):
    """A hole across the midline: the mirror of its rays near the midline is the hole again, so the mirror
    gives no cue there. The mirror is still the cue (it covers > 95 % of the hole), and the rays it leaves
    take the plain rim spline's radii instead of being left out of the implant; the rest is unchanged."""
    from dataclasses import replace

    _, mirror, hole = grown_hole
    rows, cols = np.nonzero(hole.cells)
    edge = np.argsort(cols, kind="stable")[: max(1, len(cols) * 3 // 100)]  # 3 % of the hole, at one side
    gap = np.zeros_like(hole.cells)
    gap[rows[edge], cols[edge]] = True
    gappy = replace(
        mirror,
        hit=mirror.hit & ~gap,
        r_out=np.where(gap, np.nan, mirror.r_out),
        r_in=np.where(gap, np.nan, mirror.r_in),
    )

    source, region, r_in, r_out = mirror_fill(cue=gappy)
    assert source == "mirror+spline", "a mirror covering 97 % of the hole must stay the cue"
    assert region[hole.cells].all(), "every ray of the hole is filled, the mirror's gap too"
    _, _, plain_in, plain_out = mirror_fill(with_mirror=False)
    np.testing.assert_allclose(r_out[gap], plain_out[gap], atol=1e-4)
    np.testing.assert_allclose(r_in[gap], plain_in[gap], atol=1e-4)
    _, _, full_in, full_out = mirror_fill()
    rest = hole.cells & ~gap
    np.testing.assert_allclose(r_out[rest], full_out[rest], atol=1e-4)
    np.testing.assert_allclose(r_in[rest], full_in[rest], atol=1e-4)
