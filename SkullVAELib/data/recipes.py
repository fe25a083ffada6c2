"""The defect recipes: one cranial and one facial, with every parameter in one place.

Three users draw them: ``make-defects`` and the evaluation (:mod:`.defects`, numpy, on any patient
grid in physical LPS space), the training augmentation (:mod:`.augment`, on the model grid) and
the learned refiner's sampler (:mod:`SkullVAELib.implant.learned.train`, on its LPS grid). The
numpy drawing lives in :mod:`.defects`; the torch drawing on regular grids (on the GPU while
training) lives here, with :func:`bone_bounds`, the one computation of a skull's extent. Lengths in
mm, in LPS (+x left, +y posterior, +z superior); ranges are uniform draws (low, high).

* Cranial: a site on the outer upper vault (a random side, ``azimuth_deg`` from the lateral axis,
  ``elevation_deg`` above the horizontal through mid-height), the outward normal there, and in the
  tangent frame either a SkullFix box with edge cylinders, cut from ``cut_mm[0]`` inside to
  ``cut_mm[1]`` outside along the normal, or a SkullBreak smooth union of balls.
* Facial: a slab ``depth_mm`` back from the most anterior bone (min y), over the lower ``height``
  of the skull's height (z) and a ``width`` of its width (x) placed at random within it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from SkullVAELib.core.errors import SkullVAEError

CRANIAL_STYLES = ("skullfix", "skullbreak")


@dataclass(frozen=True)
class CranialRecipe:
    """The cranial defect's parameters (see the module docstring)."""

    azimuth_deg: float = 50.0  # ± from the lateral axis towards front / back
    elevation_deg: tuple[float, float] = (25.0, 65.0)
    site_cone_deg: float = 4.0  # the site: the farthest bone within this angle of the drawn ray
    box_half_mm: tuple[float, float] = (22.0, 42.0)  # SkullFix: the box's two half-sides
    cylinders: tuple[int, int] = (2, 4)  # SkullFix: cylinders on the box's edges (inclusive)
    cylinder_radius_mm: tuple[float, float] = (8.0, 15.0)
    cut_mm: tuple[float, float] = (-30.0, 15.0)  # SkullFix: along the normal, inside and outside
    balls: tuple[int, int] = (3, 6)  # SkullBreak: balls in the union (inclusive)
    ball_offset_mm: float = 20.0  # SkullBreak: ± of a ball's centre along the tangents
    ball_depth_mm: tuple[float, float] = (-6.0, -2.0)  # SkullBreak: its centre along the normal
    ball_radius_mm: tuple[float, float] = (14.0, 26.0)
    smooth_mm: float = 4.0  # SkullBreak: the soft minimum's width (log-sum-exp)
    reach_mm: float = 110.0  # no shape reaches further from the site (lets the numpy drawing skip bone)


@dataclass(frozen=True)
class FacialRecipe:
    """The facial slab's parameters (see the module docstring); height and width are fractions."""

    depth_mm: tuple[float, float] = (44.0, 44.0)
    height: tuple[float, float] = (0.45, 0.60)
    width: tuple[float, float] = (0.60, 1.00)

    def __post_init__(self) -> None:
        values = (*self.depth_mm, *self.height, *self.width)
        if not all(math.isfinite(v) for v in values) or min(values) <= 0 or max(*self.height, *self.width) > 1:
            raise SkullVAEError(f"a facial defect needs depths > 0 and fractions in (0, 1], got {self}")


CRANIAL = CranialRecipe()
#: the augmentation's: a model grid's voxels (≈ 4–7 mm) leave fewer bone voxels near the ray
CRANIAL_MODEL_GRID = replace(CRANIAL, site_cone_deg=6.0)
FACIAL = FacialRecipe()  # make-defects, the evaluation and the augmentation
#: the learned refiner's training draws: wider ranges around FACIAL, so that it learns faces, not one box
FACIAL_WIDE = FacialRecipe(depth_mm=(34.0, 54.0), height=(0.40, 0.65), width=(0.55, 1.00))


def bone_bounds(bone: torch.Tensor, origin, spacing, direction=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi): (3,) mm, the LPS bounds of the centres of the bone voxels of ``bone`` (bool (X, Y, Z)).

    Voxel (i, j, k) sits at ``origin + direction @ (spacing * (i, j, k))``: origin (3,) mm, spacing
    one or three numbers (mm), direction (3, 3) or None (identity). Exact on oblique grids too.
    float64 on the CPU, float32 on another device.
    """
    if not bool(bone.any()):
        raise SkullVAEError("the skull has no bone to measure")
    device = bone.device
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    origin = torch.as_tensor(origin, device=device).to(dtype)
    spacing = torch.as_tensor(spacing, device=device).to(dtype).expand(3)
    matrix = torch.eye(3, dtype=dtype, device=device)
    if direction is not None:
        matrix = torch.as_tensor(direction, device=device).to(dtype)
    if bool(((matrix != 0).sum(dim=1) <= 1).all()):  # axis-aligned: the index box's corners are exact
        ends = []
        for axis in range(3):
            hit = torch.nonzero(bone.any(dim=tuple(a for a in range(3) if a != axis))).flatten()
            ends.append(hit[[0, -1]])
        index = torch.stack(ends, dim=1).to(dtype)  # (2, 3): lowest and highest index per axis
    else:
        index = torch.nonzero(bone).to(dtype)
    points = origin + (index * spacing) @ matrix.T
    return points.min(dim=0).values, points.max(dim=0).values


def _axes(shape: Sequence[int], origin, spacing, device) -> list[torch.Tensor]:
    """Voxel-centre coordinates (mm) along x, y, z, broadcastable to (X, Y, Z), float32."""
    spacing = [float(s) for s in torch.as_tensor(spacing, dtype=torch.float64).expand(3)]
    out = []
    for axis in range(3):
        c = float(origin[axis]) + spacing[axis] * torch.arange(shape[axis], device=device, dtype=torch.float32)
        view = [1, 1, 1]
        view[axis] = shape[axis]
        out.append(c.view(view))
    return out


def _uniform(bounds: Sequence[float], generator: torch.Generator) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * float(torch.rand((), generator=generator))


def facial_region(
    shape: Sequence[int],
    origin,
    spacing,
    lo: torch.Tensor,
    hi: torch.Tensor,
    generator: torch.Generator,
    recipe: FacialRecipe = FACIAL,
) -> torch.Tensor:
    """bool (X, Y, Z) on ``lo``'s device: one facial slab drawn on a regular LPS grid.

    Voxel (i, j, k) at ``origin + spacing * (i, j, k)`` (mm); ``lo``/``hi``: the complete skull's
    :func:`bone_bounds`; ``generator`` a CPU generator (draws: depth, height, width, centre).
    """
    extent = [float(h - low) for h, low in zip(hi.tolist(), lo.tolist(), strict=True)]
    depth, height = _uniform(recipe.depth_mm, generator), _uniform(recipe.height, generator) * extent[2]
    width = _uniform(recipe.width, generator) * extent[0]
    centre_x = 0.5 * float(lo[0] + hi[0]) + _uniform((-0.5, 0.5), generator) * (extent[0] - width)
    x, y, z = _axes(shape, origin, spacing, lo.device)
    return ((x - centre_x).abs() <= 0.5 * width) & (y <= float(lo[1]) + depth) & (z <= float(lo[2]) + height)


def _vault_site(points: torch.Tensor, generator: torch.Generator, recipe: CranialRecipe):
    """(surface point, outward normal) on the upper vault of the bone ``points`` (N, 3) mm; None: no bone there."""
    lo, hi = points.min(0).values, points.max(0).values
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    side = 1.0 if float(torch.rand((), generator=generator)) < 0.5 else -1.0
    az = math.radians(_uniform((-recipe.azimuth_deg, recipe.azimuth_deg), generator))
    el = math.radians(_uniform(recipe.elevation_deg, generator))
    ray = torch.tensor([side * math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    ray = ray.to(points) * half  # squashed by the bounding box: the angles spread evenly over an oblong skull
    ray = ray / ray.norm()
    rel = points - centre
    dist = rel.norm(dim=1).clamp_min(1e-6)
    near = (rel @ ray) >= math.cos(math.radians(recipe.site_cone_deg)) * dist
    if not bool(near.any()):
        return None
    surface = points[near][dist[near].argmax()]
    return surface, (surface - centre) / (surface - centre).norm()


def cranial_region(
    bone: torch.Tensor,
    origin,
    spacing,
    generator: torch.Generator,
    style: str | None = None,
    recipe: CranialRecipe = CRANIAL,
) -> torch.Tensor:
    """bool (X, Y, Z): one cranial defect drawn on the upper vault of ``bone`` (bool (X, Y, Z), voxel
    (i, j, k) at ``origin + spacing * (i, j, k)`` mm); ``style`` None draws SkullFix or SkullBreak
    at even odds. Empty if ``bone`` is empty or the drawn ray meets no bone."""
    if style is not None and style not in CRANIAL_STYLES:
        raise SkullVAEError(f"cranial defect style must be one of {', '.join(CRANIAL_STYLES)}, got {style!r}")
    if not bool(bone.any()):
        return torch.zeros_like(bone)
    sp = torch.as_tensor(spacing, dtype=torch.float32).expand(3).to(bone.device)
    points = torch.as_tensor(origin, dtype=torch.float32).to(bone.device) + bone.nonzero().float() * sp
    site = _vault_site(points, generator, recipe)
    if site is None:
        return torch.zeros_like(bone)
    surface, normal = site
    helper = torch.tensor([0.0, 0.0, 1.0] if abs(float(normal[2])) < 0.9 else [1.0, 0.0, 0.0], device=bone.device)
    t1 = torch.linalg.cross(normal, helper)
    t1 = t1 / t1.norm()
    t2 = torch.linalg.cross(normal, t1)
    rx, ry, rz = (c - surface[a] for a, c in enumerate(_axes(bone.shape, origin, spacing, bone.device)))
    a, b, d = (rx * t[0] + ry * t[1] + rz * t[2] for t in (t1, t2, normal))
    if style is None:
        style = "skullfix" if float(torch.rand((), generator=generator)) < 0.5 else "skullbreak"
    if style == "skullfix":
        return _skullfix(a, b, d, generator, recipe)
    return _skullbreak(a, b, d, generator, recipe)


def _skullfix(a, b, d, generator: torch.Generator, recipe: CranialRecipe) -> torch.Tensor:
    """A box with cylinders on its edges, in the tangent frame (a, b) and cut along the normal (d)."""
    h1, h2 = _uniform(recipe.box_half_mm, generator), _uniform(recipe.box_half_mm, generator)
    inside = (a.abs() <= h1) & (b.abs() <= h2)
    for _ in range(int(torch.randint(recipe.cylinders[0], recipe.cylinders[1] + 1, (), generator=generator))):
        u = torch.rand(3, generator=generator).tolist()
        if u[0] < 0.5:
            ca, cb = (h1 if u[1] < 0.5 else -h1), (2 * u[2] - 1) * h2
        else:
            ca, cb = (2 * u[2] - 1) * h1, (h2 if u[1] < 0.5 else -h2)
        radius = _uniform(recipe.cylinder_radius_mm, generator)
        inside = inside | ((a - ca) ** 2 + (b - cb) ** 2 <= radius**2)
    return inside & (d >= recipe.cut_mm[0]) & (d <= recipe.cut_mm[1])


def _skullbreak(a, b, d, generator: torch.Generator, recipe: CranialRecipe) -> torch.Tensor:
    """A smooth union (log-sum-exp soft minimum) of balls near the surface."""
    k, terms = recipe.smooth_mm, []
    for _ in range(int(torch.randint(recipe.balls[0], recipe.balls[1] + 1, (), generator=generator))):
        off = recipe.ball_offset_mm
        ca, cb = _uniform((-off, off), generator), _uniform((-off, off), generator)
        cd, radius = _uniform(recipe.ball_depth_mm, generator), _uniform(recipe.ball_radius_mm, generator)
        terms.append(-(torch.sqrt((a - ca) ** 2 + (b - cb) ** 2 + (d - cd) ** 2) - radius) / k)
    return -k * torch.logsumexp(torch.stack(terms), dim=0) <= 0.0
