"""Procedural skull phantoms, so that everything runs without external data.

A phantom is built in millimetres in a skull frame (x → patient left, y → posterior,
z → superior, origin at the centre of the cranial vault) from simple shapes:

- cranial vault: a shell between two ellipsoids (≈ 140 LR × 180 AP × 130 SI mm outer,
  4–8 mm thick) whose radius and thickness carry low-order polynomial perturbations of
  the direction (the first spherical harmonics), ±8 % per subject in all;
- cranial base: a plate closing the vault from below, pierced by the foramen magnum;
- orbits (cavities with thin walls), a nasal aperture in a maxilla half-shell, zygomatic
  bodies and arches, and a mandible (body, rami to the condyles, coronoid processes).

The face is vertically a little compressed so a whole skull fits the default field of
view (128 × 128 × 96 voxels of 1.6 mm = 204.8 × 204.8 × 153.6 mm). The voxel grid is laid
out like SkullFix: identity direction, index i → left, j → posterior, k → superior, so the
face is at low j and the vault top at high k; the skull is centred in the grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.io.image import SkullImage

#: Field of view (mm) of the default grid; `make_phantom(spacing=None)` fits a grid to it.
DEFAULT_FOV_MM = (204.8, 204.8, 153.6)

# Nominal outer semi-axes of the vault (mm): LR, AP, SI.
_VAULT_SEMI_MM = (70.0, 90.0, 65.0)
# Lowest point of the skull (mandible) in units of the vault's SI semi-axis.
_CHIN_DEPTH = 1.15


class _Grid:
    """Skull-frame coordinates (mm) of an axis-aligned voxel grid, evaluated by sub-box."""

    def __init__(self, shape: Sequence[int], spacing: Sequence[float], centre_mm: Sequence[float]) -> None:
        self.shape = tuple(int(s) for s in shape)
        # 1-D skull-frame coordinates along i, j, k; the grid centre is at `centre_mm`.
        self.axes = [
            (np.arange(n) - (n - 1) / 2.0) * float(sp) + float(c)
            for n, sp, c in zip(self.shape, spacing, centre_mm, strict=True)
        ]
        self.mask = np.zeros(self.shape, dtype=bool)

    def region(self, lo: Sequence[float], hi: Sequence[float]):
        """Slices of the voxels whose coordinates lie in the box [lo, hi] and their broadcast coordinates."""
        slices, coords = [], []
        for axis, (ax, a, b) in enumerate(zip(self.axes, lo, hi, strict=True)):
            start, stop = np.searchsorted(ax, a), np.searchsorted(ax, b, side="right")
            slices.append(slice(start, stop))
            shape = [1, 1, 1]
            shape[axis] = max(stop - start, 0)
            coords.append(ax[start:stop].astype(np.float32).reshape(shape))
        return tuple(slices), coords

    def paint(self, shape_fn, lo, hi, value: bool = True) -> None:
        """Set (or clear, value=False) the voxels of the box where ``shape_fn(x, y, z)`` is True."""
        sl, (x, y, z) = self.region(lo, hi)
        if any(s.stop <= s.start for s in sl):
            return
        inside = shape_fn(x, y, z)
        if value:
            self.mask[sl] |= inside
        else:
            self.mask[sl] &= ~inside


def _ellipsoid(centre, semi):
    cx, cy, cz = centre
    ax, ay, az = semi

    def fn(x, y, z):
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 <= 1.0

    return fn, np.subtract(centre, semi), np.add(centre, semi)


def _capsule(a, b, radius, stretch=(1.0, 1.0, 1.0)):
    """Points within ``radius`` of segment a–b, in a metric stretched by ``stretch`` per axis."""
    a, b, s = (np.asarray(v, dtype=np.float32) for v in (a, b, stretch))
    a_s, b_s = a / s, b / s
    ab = b_s - a_s
    denom = max(float(ab @ ab), 1e-9)

    def fn(x, y, z):
        p = (x / s[0] - a_s[0], y / s[1] - a_s[1], z / s[2] - a_s[2])
        t = np.clip((p[0] * ab[0] + p[1] * ab[1] + p[2] * ab[2]) / denom, 0.0, 1.0)
        d2 = (p[0] - t * ab[0]) ** 2 + (p[1] - t * ab[1]) ** 2 + (p[2] - t * ab[2]) ** 2
        return d2 <= radius * radius

    pad = radius * s
    return fn, np.minimum(a, b) - pad, np.maximum(a, b) + pad


def _direction_polynomial(rng: np.random.Generator, amplitude: float, asymmetry: float = 0.1):
    """A random smooth function of the direction u = p/|p| with max |value| = amplitude.

    Monomials of degree ≤ 3 of (ux, uy, uz) span the spherical harmonics up to l = 3.
    Terms odd in ux (left/right asymmetric) get weight ``asymmetry`` so phantoms stay
    nearly symmetric like real skulls.
    """
    powers = [(i, j, k) for i in range(4) for j in range(4) for k in range(4) if 1 <= i + j + k <= 3]
    weights = np.array([asymmetry if i % 2 else 1.0 for i, _, _ in powers])
    coeffs = rng.normal(size=len(powers)) * weights

    def raw(ux, uy, uz):
        px, py, pz = ([np.ones_like(u), u, u * u, u * u * u] for u in (ux, uy, uz))  # powers 0..3
        return sum(c * px[i] * py[j] * pz[k] for c, (i, j, k) in zip(coeffs, powers, strict=True))

    # Normalise on a Fibonacci sphere so the perturbation peaks at exactly `amplitude`.
    n = 400
    idx = np.arange(n) + 0.5
    polar, azim = np.arccos(1 - 2 * idx / n), np.pi * (1 + 5**0.5) * idx
    peak = np.abs(raw(np.sin(polar) * np.cos(azim), np.sin(polar) * np.sin(azim), np.cos(polar))).max()
    scale = np.float32(amplitude / max(peak, 1e-9))
    return lambda ux, uy, uz: raw(ux, uy, uz) * scale


def _paint_vault(g: _Grid, semi, shape_poly, thick_poly, thickness: float) -> None:
    """Ellipsoidal shell (perturbed radius and thickness) and a stepped cranial base inside it.

    The shell reaches down to z = -0.55 C at the front and sides and curves further under
    at the back (occiput, -0.72 C); the base is a 3 mm plate in three steps from front to
    back (anterior, middle and posterior cranial fossae).
    """
    A, B, C = semi
    reach = 1.1 * np.array(semi)
    # (y, z) knots of the shell's lower edge and of the fossa floors, in units of (B, C).
    shell_y, shell_z = np.array([-1.0, 0.2, 0.5, 1.0]) * B, np.array([-0.55, -0.55, -0.72, -0.72]) * C
    floor_y = np.array([-1.0, -0.40, -0.25, 0.10, 0.25, 1.0]) * B
    floor_z = np.array([-0.08, -0.08, -0.42, -0.42, -0.62, -0.62]) * C

    def shell(x, y, z):
        x, y, z = np.broadcast_arrays(x, y, z)
        rho = np.sqrt((x / A) ** 2 + (y / B) ** 2 + (z / C) ** 2)  # 1 on the unperturbed outer surface
        # Only a band around the surface can be shell bone (perturbation ≤ 3 %, thickness ≤ 8 mm).
        band = (rho >= 0.8) & (rho <= 1.05)
        bx, by, bz, brho = x[band], y[band], z[band], rho[band]
        r = np.sqrt(bx * bx + by * by + bz * bz) + np.float32(1e-3)
        ux, uy, uz = bx / r, by / r, bz / r
        depth = r * ((1 + shape_poly(ux, uy, uz)) / brho - 1)  # mm below the outer surface
        t = np.clip(thickness + thick_poly(ux, uy, uz), 4.0, 8.0)
        bone = np.zeros(x.shape, dtype=bool)
        bone[band] = (depth >= 0) & (depth <= t) & (bz >= np.interp(by, shell_y, shell_z))
        inside = rho < 0.8
        inside[band] = depth >= 0
        # Fossa floors rise towards the sides (bowls), 3 mm thick.
        floor_at = np.interp(y, floor_y, floor_z).astype(np.float32) + np.float32(0.3 * C) * (x / A) ** 2
        return bone | (inside & (np.abs(z - floor_at) <= 1.5))

    g.paint(shell, -reach, reach)


def _arch_points(half_width, y_back, y_front, z, n=10):
    """Points of a half-ellipse arch (mandible/dental arch) from the left back end to the front."""
    phi = np.linspace(0.0, np.pi / 2, n)
    return [(half_width * np.cos(p), y_back - (y_back - y_front) * np.sin(p), z) for p in phi]


def _paint_face(g: _Grid, semi, rng: np.random.Generator) -> None:
    """Orbits, maxilla with nasal aperture, zygomatic arches and the mandible."""
    A, B, C = semi
    jitter = lambda: 1.0 + rng.uniform(-0.05, 0.05)  # noqa: E731 - small per-structure size variation
    base_z = -0.55 * C
    orbit_semi = np.array([16.0 * jitter(), 22.0, 15.0 * jitter()])
    orbit_centres = [(s * 0.42 * A, -0.80 * B, -0.30 * C) for s in (1, -1)]
    maxilla_c, maxilla_semi = (0.0, -0.55 * B, -0.62 * C), (0.42 * A, 0.42 * B * jitter(), 0.28 * C)

    # Maxilla: anterior half of an ellipsoidal shell, 6 mm thick, with a hard palate.
    outer, lo, hi = _ellipsoid(maxilla_c, maxilla_semi)
    inner, _, _ = _ellipsoid(maxilla_c, np.subtract(maxilla_semi, 6.0))
    g.paint(lambda x, y, z: outer(x, y, z) & ~inner(x, y, z) & (y <= maxilla_c[1] + 8.0), lo, hi)
    g.paint(lambda x, y, z: outer(x, y, z) & (np.abs(z - (maxilla_c[2] - 0.2 * C)) <= 2.5), lo, hi)
    # Orbit walls (posterior half of a thin shell) then the orbit cavities, cut through everything.
    for centre in orbit_centres:
        wall, lo, hi = _ellipsoid(centre, orbit_semi + 3.0)
        g.paint(lambda x, y, z, w=wall, c=centre: w(x, y, z) & (y >= c[1] - 4.0), lo, hi)
    # Zygomatic bodies and arches (bowing out, ending in the temporal wall).
    for s in (1, -1):
        body, lo, hi = _ellipsoid((s * 0.55 * A, -0.74 * B, -0.50 * C), (10.0, 9.0, 11.0))
        g.paint(body, lo, hi)
        pts = [
            (s * 0.58 * A, -0.74 * B, -0.52 * C),
            (s * 0.93 * A, -0.42 * B, -0.52 * C),
            (s * 0.84 * A, -0.10 * B, -0.50 * C),
        ]
        for a, b in zip(pts[:-1], pts[1:], strict=True):
            g.paint(*_capsule(a, b, 3.5))
    for centre in orbit_centres:
        g.paint(*_ellipsoid(centre, orbit_semi), value=False)
    # Nasal aperture: pear shape, wider below.
    g.paint(*_ellipsoid((0.0, -0.92 * B, -0.50 * C), (8.0, 18.0, 12.0)), value=False)
    g.paint(*_ellipsoid((0.0, -0.92 * B, -0.62 * C), (12.0, 18.0, 11.0)), value=False)

    # Mandible: body as a vertical plate along an arch, rami up to the condyles at the base.
    chin = (-0.88 * B * jitter(), -1.0 * C)
    angle = (0.68 * A * jitter(), -0.10 * B, -0.95 * C)
    body_pts = _arch_points(angle[0], angle[1], chin[0], 0.0)
    zs = np.linspace(angle[2], chin[1], len(body_pts))
    for s in (1, -1):
        pts = [(s * x, y, z) for (x, y, _), z in zip(body_pts, zs, strict=True)]
        for a, b in zip(pts[:-1], pts[1:], strict=True):
            g.paint(*_capsule(a, b, 4.5, stretch=(1.0, 1.0, 2.2)))
        condyle = (s * 0.70 * A, -0.02 * B, base_z + 2.0)
        gonion = (s * angle[0], angle[1], angle[2])
        g.paint(*_capsule(gonion, condyle, 4.0, stretch=(1.0, 2.2, 1.0)))
        g.paint(*_ellipsoid(condyle, (8.0, 5.0, 4.5)))
        ramus_mid = tuple(0.5 * (np.array(gonion) + np.array(condyle)))
        g.paint(*_capsule(ramus_mid, (s * 0.64 * A, -0.36 * B, -0.62 * C), 3.0, stretch=(1.0, 1.6, 1.0)))


def make_phantom(
    seed: int,
    shape: Sequence[int] = (128, 128, 96),
    spacing: Sequence[float] | float | None = (1.6, 1.6, 1.6),
) -> SkullImage:
    """One skull phantom on a (I, J, K) grid of ``spacing`` mm voxels, centred in the grid.

    Args:
        seed: the subject; the same seed gives the same skull at any spacing.
        shape: voxel counts (I, J, K).
        spacing: voxel size in mm (one number or three); None fits ``shape`` to
            ``DEFAULT_FOV_MM`` (204.8 × 204.8 × 153.6 mm) so any grid holds the whole skull.

    Returns:
        A `SkullImage` with identity direction; parts outside a too-small field of view are cut.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise SkullVAEError(f"phantom grid must be three sizes of at least 8 voxels, got {shape}")
    if spacing is None:
        spacing = tuple(f / n for f, n in zip(DEFAULT_FOV_MM, shape, strict=True))
    spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing, dtype=float), (3,)))
    if min(spacing) <= 0 or not np.all(np.isfinite(spacing)):
        raise SkullVAEError(f"phantom spacing must be positive millimetres, got {spacing}")

    rng = np.random.default_rng(seed)
    axis_scale = 1.0 + rng.uniform(-0.05, 0.05, size=3)
    shape_amp = 0.03 * rng.uniform(0.5, 1.0)  # axis scale + surface perturbation stay within ±8 %
    semi = tuple(float(v) for v in np.array(_VAULT_SEMI_MM) * axis_scale)
    shape_poly = _direction_polynomial(rng, shape_amp)
    thick_poly = _direction_polynomial(rng, 1.5)
    thickness = rng.uniform(5.5, 7.0)

    # Centre the skull's extent (vertex ... chin) in the grid.
    top, bottom = semi[2] * (1 + shape_amp), -_CHIN_DEPTH * semi[2]
    g = _Grid(shape, spacing, centre_mm=(0.0, 0.0, 0.5 * (top + bottom)))
    _paint_vault(g, semi, shape_poly, thick_poly, thickness)
    # Foramen magnum through the cranial base.
    A, B, C = semi
    fm_r = 15.0 * rng.uniform(0.9, 1.1)
    g.paint(*_capsule((0.0, 0.38 * B, -C), (0.0, 0.38 * B, -0.40 * C), fm_r, stretch=(1.0, 1.2, 1.0)), value=False)
    _paint_face(g, semi, rng)

    mask = _largest_component(g.mask)
    origin = -(np.array(shape) - 1) / 2.0 * np.array(spacing)
    return SkullImage(mask, origin, spacing, np.eye(3), {"source": "phantom", "phantom_seed": int(seed)})


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component (drops crumbs left by the carving)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def phantom_seeds(n: int, seed: int) -> list[int]:
    """The per-subject seeds of a cohort: independent streams derived from ``seed``."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(int(seed)).spawn(int(n))]


def make_phantom_cohort(
    n: int,
    seed: int,
    shape: Sequence[int] = (128, 128, 96),
    spacing: Sequence[float] | float | None = (1.6, 1.6, 1.6),
    progress=None,
) -> list[SkullImage]:
    """``n`` different phantoms, reproducible from ``seed`` (see `make_phantom`)."""
    if int(n) < 1:
        raise SkullVAEError(f"a phantom cohort needs at least one phantom, got n={n}")
    images = []
    for index, subject_seed in enumerate(phantom_seeds(n, seed)):
        images.append(make_phantom(subject_seed, shape, spacing))
        if progress is not None:
            progress("phantoms", (index + 1) / n, f"{index + 1}/{n}")
    return images
