"""The fast ray casting (issue 26): the same ray map and the same rim-fit implant as the reference.

The reference is the implementation this one replaced (``scipy.ndimage.map_coordinates`` over
every sample of every ray, kept here only as the reference): :func:`_reference_cast`. The rim-fit
comparisons use :func:`_every_sample_cast` (every sample of every ray, numpy: the same map, bit for
bit, as the first test shows, and 10× quicker). Phantoms at 96×96×72 voxels of 2.2 mm.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from SkullVAELib.data.defects import cranial_defect
from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.evaluation.metrics import dice
from SkullVAELib.implant import coarse_to_fine, raycast, raymarch, rimfit
from SkullVAELib.implant import rasterise as rasterise_module
from SkullVAELib.implant.symmetry import find_mirror_plane
from SkullVAELib.io.image import SkullImage, read_skull

SHAPE, SPACING = (96, 96, 72), (2.2, 2.2, 2.2)


def _reference_cast(skull: SkullImage, centre, step_deg, transform=None, **_) -> raycast.RayMap:
    """The ray casting before issue 26: every sample of every ray through map_coordinates."""
    alpha, beta = raycast.angle_grid(step_deg)
    dirs = raycast.directions(alpha[:, None], beta[None, :]).reshape(-1, 3)
    radii = np.arange(raycast.MIN_RADIUS_MM, raycast.max_radius(skull, centre) + 0.25, 0.25)
    affine = skull.index_to_physical()
    inv, origin = np.linalg.inv(affine[:3, :3]), affine[:3, 3]
    lin, off = (np.eye(3), np.zeros(3)) if transform is None else (transform[:3, :3], transform[:3, 3])
    start = (inv @ (lin @ centre + off - origin)).astype(np.float32)
    step = (dirs @ (inv @ lin).T).astype(np.float32)
    rr = radii.astype(np.float32)
    coords = start[:, None, None] + step.T[:, :, None] * rr[None, None, :]
    volume = np.ascontiguousarray(skull.mask, dtype=np.uint8)
    samples = ndimage.map_coordinates(volume, coords.reshape(3, -1), order=0, mode="constant", cval=0)
    samples = samples.reshape(len(dirs), len(rr)).astype(bool)
    n_r = len(rr)
    any_hit = samples.any(axis=1)
    last = n_r - 1 - np.argmax(samples[:, ::-1], axis=1)
    gap = ~samples & (np.arange(n_r)[None, :] < last[:, None])
    first = np.where(gap.any(axis=1), n_r - np.argmax(gap[:, ::-1], axis=1), 0)
    shape = (len(alpha), len(beta))
    r_out = np.where(any_hit, rr[last] + 0.125, np.nan).astype(np.float32).reshape(shape)
    r_in = np.where(any_hit, rr[first] - 0.125, np.nan).astype(np.float32).reshape(shape)
    return raycast.RayMap(np.asarray(centre), float(step_deg), any_hit.reshape(shape), r_out, r_in)


def _reference_rasterise(skull, centre, step_deg, region, r_in, r_out) -> np.ndarray:
    """rimfit.rasterise before issue 26: the whole box turned into angles at once."""
    out = np.zeros(skull.shape, dtype=bool)
    alpha, beta = raycast.angle_grid(step_deg)
    dirs = raycast.directions(alpha[:, None], beta[None, :])[region]
    lo_r, hi_r = float(np.nanmin(r_in[region])) - 1.0, float(np.nanmax(r_out[region])) + 1.0
    corners = np.concatenate([centre + lo_r * dirs, centre + hi_r * dirs])
    affine = skull.index_to_physical()
    index = (corners - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    lo = np.clip(np.floor(index.min(axis=0)).astype(int) - 2, 0, None)
    hi = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 3, skull.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    ii, jj, kk = np.meshgrid(*(np.arange(s.start, s.stop, dtype=np.float32) for s in box), indexing="ij")
    lin, off = affine[:3, :3].astype(np.float32), (affine[:3, 3] - centre).astype(np.float32)
    vec = np.stack([lin[a, 0] * ii + lin[a, 1] * jj + lin[a, 2] * kk + off[a] for a in range(3)], axis=-1)
    r, a, b = raycast.to_angles(vec)
    coords = np.stack(raycast.grid_coordinates(a, b, step_deg))
    inside = ndimage.map_coordinates(region.astype(np.uint8), coords, order=0, mode="nearest").astype(bool)
    near = ndimage.distance_transform_edt(~np.isfinite(r_out), return_distances=False, return_indices=True)
    lo_val = ndimage.map_coordinates(r_in[tuple(near)], coords, order=1, mode="nearest")
    hi_val = ndimage.map_coordinates(r_out[tuple(near)], coords, order=1, mode="nearest")
    out[box] = inside & (r >= lo_val) & (r <= hi_val) & ~skull.mask[box]
    return out


_FAST_CAST = raycast.cast


def _coarse_to_fine_cast(*args, **kwargs) -> raycast.RayMap:
    """The fast cast, coarse to fine (as the rim fit may call it)."""
    return _FAST_CAST(*args, **{**kwargs, "coarse_factor": coarse_to_fine.COARSE_FACTOR})


def _every_sample_cast(skull: SkullImage, centre=None, step_deg=1.0, transform=None, **_) -> raycast.RayMap:
    """Every sample of every ray (no coarse pass, no block skipping)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(raymarch.RayMarcher, "march", raymarch.RayMarcher.march_every)
        return _FAST_CAST(skull, centre, step_deg, transform, coarse_factor=1)


@pytest.fixture(scope="module")
def defect_cases():
    """Two phantom vault defects: (defective skull, mirror transform); the first uses the mirror cue."""
    phantom = make_phantom(1, SHAPE, SPACING)
    cases = []
    for seed, style in ((1, "skullbreak"), (2, "skullfix")):
        defective, _ = cranial_defect(phantom, seed, style=style)
        cases.append((defective, find_mirror_plane(defective).transform()))
    return cases


def _fortran(skull: SkullImage) -> SkullImage:
    """The same skull with a Fortran-ordered mask, as SimpleITK hands them over."""
    return SkullImage(np.asfortranarray(skull.mask), skull.origin, skull.spacing, skull.direction)


def _same_map(a: raycast.RayMap, b: raycast.RayMap, where=None) -> None:
    where = np.ones_like(a.hit) if where is None else where
    assert np.array_equal(a.hit[where], b.hit[where])
    np.testing.assert_array_equal(a.r_out[where], b.r_out[where])
    np.testing.assert_array_equal(a.r_in[where], b.r_in[where])


@pytest.mark.parametrize("order", ["C", "F"])
def test_every_ray_cast_gives_the_reference_map_bit_for_bit(defect_cases, order):
    """Block skipping and windows (numpy), either memory order, a mirror transform: the same radii."""
    defective, transform = defect_cases[0]
    skull = _fortran(defective) if order == "F" else defective
    centre = raycast.cranial_centre(skull)
    for tx in (None, transform):
        ref = _reference_cast(skull, centre, 3.0, tx)
        _same_map(raycast.cast(skull, centre, 3.0, tx, coarse_factor=1), ref)
        _same_map(_every_sample_cast(skull, centre, 3.0, tx), ref)


def test_thick_layers_and_rays_leaving_the_grid_match_the_reference():
    """A slab thicker than a window (layer bottoms found window by window), bone cut by the grid's
    edge, a centre off the grid's middle: still the reference, ray by ray."""
    shape = (70, 60, 50)
    idx = np.indices(shape).astype(float)
    r = np.sqrt(((idx - np.array([30.0, 28.0, 20.0])[:, None, None, None]) ** 2).sum(0))
    mask = (r > 18) & (r < 22)
    mask[:, :, :6] = True  # a thick floor, cut by the grid's bottom
    mask[5:9, 10:50, 10:40] = True  # a plate beside the shell
    skull = SkullImage(mask, (-10.0, 4.0, 2.0), (1.1, 0.9, 1.3))
    centre = skull.index_to_physical()[:3, :3] @ np.array([30.0, 28.0, 20.0]) + skull.origin
    _same_map(raycast.cast(skull, centre, 3.0, coarse_factor=1), _reference_cast(skull, centre, 3.0))


def test_the_default_casts_every_ray(defect_cases):
    defective, _ = defect_cases[1]
    assert raycast.cast(defective, step_deg=6.0).exact is None


def test_coarse_to_fine_is_exact_around_every_miss(defect_cases):
    """The coarse-to-fine map (opt-in): the reference's hits everywhere and its radii on every cast
    ray, which include every ray within REFINE_MARGIN cells of a miss; smooth elsewhere."""
    defective, _ = defect_cases[0]
    centre = raycast.cranial_centre(defective)
    fast = raycast.cast(defective, centre, 1.0, coarse_factor=coarse_to_fine.COARSE_FACTOR)
    ref = _every_sample_cast(defective, centre, 1.0)
    assert np.array_equal(fast.hit, ref.hit)
    _same_map(fast, ref, fast.exact)
    near_miss = coarse_to_fine._dilate(~ref.hit, coarse_to_fine.REFINE_MARGIN)
    assert fast.exact[near_miss].all()
    assert not fast.exact.all(), "nothing was left to interpolate: the coarse pass saved nothing"
    interpolated = ~fast.exact
    assert np.abs(fast.r_out - ref.r_out)[interpolated].max() <= 2 * max(SPACING)


def test_a_given_set_of_rays_is_cast_exactly(defect_cases):
    defective, transform = defect_cases[0]
    centre = raycast.cranial_centre(defective)
    must = np.zeros((180, 360), dtype=bool)
    must[40:60, 100:200] = True
    mirror = raycast.cast(defective, centre, 1.0, transform, exact=must, coarse_factor=coarse_to_fine.COARSE_FACTOR)
    assert mirror.exact[must].all()
    _same_map(mirror, _every_sample_cast(defective, centre, 1.0, transform), mirror.exact)


@pytest.mark.parametrize("coarse", [1, coarse_to_fine.COARSE_FACTOR])
def test_only_the_rays_asked_for_are_cast_and_they_are_the_full_maps(defect_cases, coarse):
    """``rays``: the full cast's radii on those rays (a mirror transform too), misses elsewhere."""
    defective, transform = defect_cases[0]
    centre = raycast.cranial_centre(defective)
    some = np.zeros((60, 120), dtype=bool)
    some[10:25, 30:70] = some[40:45, :] = True
    part = raycast.cast(defective, centre, 3.0, transform, coarse_factor=coarse, rays=some)
    full = raycast.cast(defective, centre, 3.0, transform, coarse_factor=coarse)
    _same_map(part, full, some)
    assert part.hit[some].any() and not part.hit[~some].any()
    assert np.isnan(part.r_out[~some]).all() and np.isnan(part.r_in[~some]).all()
    with pytest.raises(ValueError, match="rays must be"):
        raycast.cast(defective, centre, 2.0, rays=some)


def test_the_mirror_is_cast_only_near_the_holes_and_fills_the_same(defect_cases, monkeypatch):
    """The rim fit reads the mirror on the holes' rims and bands only: casting it there gives the
    implant of a mirror cast on every ray, with the mirror's cue, and nothing when there is no hole."""
    defective, transform = defect_cases[0]
    asked = []

    def spy(*args, **kwargs):
        asked.append(kwargs.get("rays"))
        return _FAST_CAST(*args, **kwargs)

    monkeypatch.setattr(raycast, "cast", spy)
    near = rimfit.rim_fit(defective, mirror_transform=transform)
    assert asked[0] is None and asked[1] is not None and 0 < asked[1].mean() < 0.5
    monkeypatch.setattr(rimfit, "cue_rays", lambda holes, reach: np.ones_like(holes[0]))
    everywhere = rimfit.rim_fit(defective, mirror_transform=transform)
    assert [h.source for h in near.holes] == [h.source for h in everywhere.holes] == ["mirror+spline"]
    np.testing.assert_array_equal(near.implant, everywhere.implant)
    asked.clear()
    rimfit.rim_fit(make_phantom(1, SHAPE, SPACING), mirror_transform=transform)  # no hole: no mirror cast
    assert asked == [None]


def test_torch_gives_the_numpy_map(defect_cases):
    pytest.importorskip("torch")
    defective, transform = defect_cases[1]
    centre = raycast.cranial_centre(defective)
    for tx in (None, transform):
        _same_map(raycast.cast(defective, centre, 2.0, tx, device="cpu"), raycast.cast(defective, centre, 2.0, tx))


def test_threads_give_the_same_map(defect_cases, monkeypatch):
    defective, _ = defect_cases[1]
    centre = raycast.cranial_centre(defective)
    monkeypatch.setattr(raymarch, "cpu_threads", lambda: 1)
    one = raycast.cast(defective, centre, 1.0, coarse_factor=1)
    monkeypatch.setattr(raymarch, "cpu_threads", lambda: 3)
    _same_map(one, raycast.cast(defective, centre, 1.0, coarse_factor=1))


def test_a_known_ray_length_gives_the_same_map(defect_cases):
    """The quality score casts the completed skull with the length its implant and bone need
    (mask_radius), instead of listing the completed mask's bone again: the same map."""
    defective, _ = defect_cases[0]
    phantom = make_phantom(1, SHAPE, SPACING)
    implant = phantom.mask & ~defective.mask
    centre = raycast.cranial_centre(defective)
    points = np.argwhere(implant) @ defective.index_to_physical()[:3, :3].T + defective.origin
    reach = raycast.mask_radius(defective, implant, centre)
    assert reach >= np.linalg.norm(points - centre, axis=1).max()
    assert raycast.mask_radius(defective, np.zeros_like(implant), centre) == 0.0
    completed = defective.with_mask(defective.mask | implant)
    bound = max(raycast.max_radius(defective, centre), reach)
    _same_map(raycast.cast(completed, centre, 3.0, radius_mm=bound), raycast.cast(completed, centre, 3.0))


@pytest.mark.parametrize("order", ["C", "F"])
def test_bone_points_list_bone_in_c_order_of_the_indices(defect_cases, order):
    defective, _ = defect_cases[0]
    skull = _fortran(defective) if order == "F" else defective
    index = np.argwhere(skull.mask)[::7]
    affine = skull.index_to_physical()
    np.testing.assert_array_equal(raycast.bone_points(skull, 7), index @ affine[:3, :3].T + affine[:3, 3])


def _rim_fit_with(monkeypatch, cast, skull, transform, cfg=None):
    monkeypatch.setattr(raycast, "cast", cast)
    return rimfit.rim_fit(skull, cfg, mirror_transform=transform)


@pytest.mark.parametrize("coarse", [False, True])
def test_rim_fit_gives_the_reference_implant_on_phantoms(defect_cases, monkeypatch, coarse):
    """Block skipping (the default cast) and, opt-in, coarse to fine against every sample of every ray:
    DSC >= 0.995 (in practice the same voxels), with the mirror cue and without. Coarse to fine
    interpolates the rays of smooth bone, thicknesses a fraction of a voxel off the cast ones, which the
    rim's 0.5 mm thinning test (``trim_mm``) would read on these 2.2 mm voxels: it runs without it
    (with it: DSC 0.97-0.99 to the reference on SkullFix 056, 060, 061; not the default path)."""
    cast = _coarse_to_fine_cast if coarse else _FAST_CAST
    cfg = rimfit.RimFitConfig(trim_mm=0.0) if coarse else None
    sources = []
    for (defective, transform), tx in ((defect_cases[0], True), (defect_cases[1], True), (defect_cases[1], False)):
        tx = transform if tx else None
        fast = _rim_fit_with(monkeypatch, cast, defective, tx, cfg)
        ref = _rim_fit_with(monkeypatch, _every_sample_cast, defective, tx, cfg)
        assert fast.implant.any()
        sources += [h.source for h in fast.holes]
        assert [h.source for h in fast.holes] == [h.source for h in ref.holes]
        assert all(np.array_equal(a.cells, b.cells) for a, b in zip(fast.holes, ref.holes, strict=True))
        assert dice(fast.implant, ref.implant) >= 0.995
    assert "mirror+spline" in sources, "no case used the mirror map"


@pytest.mark.parametrize("order", ["C", "F"])
def test_rasterise_gives_the_reference_voxels(defect_cases, monkeypatch, order):
    """The slab-wise rasterisation of the rim fit's fills: the reference's voxels, in the mask's memory order."""
    defective, transform = defect_cases[0]
    skull = _fortran(defective) if order == "F" else defective
    calls = []

    def spy(*args):
        calls.append(args)
        return rasterise(*args)

    rasterise = rimfit.rasterise
    monkeypatch.setattr(rimfit, "rasterise", spy)
    monkeypatch.setattr(rasterise_module, "_SLAB_VOXELS", 20_000)  # several slabs even on a phantom
    rimfit.rim_fit(skull, mirror_transform=transform)
    assert calls
    for args in calls:
        fast = rasterise(*args)
        assert fast.any() and fast.flags.f_contiguous == (order == "F")
        assert np.array_equal(fast, _reference_rasterise(*args))


@pytest.mark.skullfix
@pytest.mark.parametrize("coarse", [False, True])
def test_rim_fit_gives_the_reference_implant_on_a_real_case(skullfix_dir, monkeypatch, coarse):
    """Validation case 058 (512×512×232, Fortran-ordered as read): the rim fit's implant with the
    default cast (every ray, block skipping) and, opt-in, coarse to fine (without the rim's thinning
    test, as on the phantoms above), against every sample of every ray."""
    defective = read_skull(skullfix_dir / "defective_skull" / "058.nrrd", kind="binary")
    transform = find_mirror_plane(defective).transform()
    cast = _coarse_to_fine_cast if coarse else _FAST_CAST
    cfg = rimfit.RimFitConfig(trim_mm=0.0) if coarse else None
    fast = _rim_fit_with(monkeypatch, cast, defective, transform, cfg)
    ref = _rim_fit_with(monkeypatch, _every_sample_cast, defective, transform, cfg)
    assert fast.implant.sum() > 100_000
    assert all(np.array_equal(a.cells, b.cells) for a, b in zip(fast.holes, ref.holes, strict=True))
    assert dice(fast.implant, ref.implant) >= 0.995


def test_the_centre_and_radius_are_computed_once_per_mask(defect_cases, monkeypatch):
    """The rim fit and the quality score ask for the same cranial centre and bone radius: the second
    call reuses the first's value (a copy), a new mask or a new centre computes again."""
    defective, _ = defect_cases[0]
    raycast._bone_cache.clear()
    calls = []
    fit = raycast._fit_cranial_centre
    monkeypatch.setattr(raycast, "_fit_cranial_centre", lambda skull: calls.append(1) or fit(skull))
    first = raycast.cranial_centre(defective)
    first += 100.0  # the caller's copy: the memo is untouched
    again = raycast.cranial_centre(defective)
    assert len(calls) == 1
    np.testing.assert_array_equal(again, fit(defective))
    other = defective.with_mask(defective.mask.copy())
    raycast.cranial_centre(other)
    assert len(calls) == 2
    near, far = raycast.max_radius(other, again), raycast.max_radius(other, again + 30.0)
    assert far > near
    assert raycast.max_radius(other, again) == near == raycast._farthest_bone(other, again)


def test_the_grid_directions_are_made_once_read_only_and_equal_the_angles():
    alpha, beta = raycast.angle_grid(2.0)
    dirs = raycast.grid_directions(2.0)
    assert dirs is raycast.grid_directions(2.0) and not dirs.flags.writeable
    np.testing.assert_array_equal(dirs, raycast.directions(alpha[:, None], beta[None, :]))


def test_voxel_cells_find_the_ray_through_each_voxel():
    """Straight up from the centre is α = 90°, β = 0; straight down wraps onto the seam's first or last
    column; the radius is the voxel centre's distance (an oblique grid included)."""
    angle = np.deg2rad(30.0)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    skull = SkullImage(np.zeros((41, 41, 41), dtype=bool), np.zeros(3), np.ones(3), direction)
    centre = skull.index_to_physical()[:3, :3] @ np.array([20.0, 20.0, 20.0])
    row, col, radius = raycast.voxel_cells(skull, np.array([[20, 20, 40], [20, 20, 0]]), centre, 1.0)
    alpha, beta = raycast.angle_grid(1.0)
    np.testing.assert_allclose(radius, [20.0, 20.0])
    assert abs(np.rad2deg(alpha[row[0]]) - 90.0) <= 0.5 and abs(np.rad2deg(beta[col[0]])) <= 0.5
    assert abs(np.rad2deg(alpha[row[1]]) - 90.0) <= 0.5 and abs(abs(np.rad2deg(beta[col[1]])) - 180.0) <= 0.5
