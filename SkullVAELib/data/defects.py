"""Artificial defects: cut a complete skull into (defective skull, implant).

Both generators work in physical LPS space (mm; +x left, +y posterior, +z superior), so
sizes are in millimetres and oblique direction matrices are honoured. The defect shape
is evaluated only at the bone voxels (``implant = complete ∩ defect``), which keeps
512×512×Z volumes cheap. Always ``defective | implant == complete`` with no overlap, both
on the input's exact geometry.

- `cranial_defect`: on the upper vault (above the skull's mid-height, random side), either
  SkullFix style (a box plus a few cylinders, cut through the bone along the surface
  normal), SkullBreak style (a smooth union of balls) or an irregular outline (a star-shaped
  curve, :mod:`.outline`, cut along the normal like the box).
- `facial_defect`: a slab from the front of the skull's bounding box, ``depth_mm`` deep,
  over the lower part of the skull (the face) and a random width.

The recipes' parameters are :mod:`.recipes`' (the augmentation and the refiner draw the same ones).

Draws use ``numpy.random.default_rng(SeedSequence([seed, attempt]))``; a draw that removes
(almost) nothing is retried with the next attempt, so a seed always gives the same cut.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence

import numpy as np

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.outline import draw_outline, irregular_inside
from SkullVAELib.data.recipes import CRANIAL, CRANIAL_STYLES, FACIAL, CranialRecipe, FacialRecipe
from SkullVAELib.io.image import SkullImage

MIN_EXTENT_MM = 60.0  # a skull smaller than this along any physical axis is rejected
MIN_BONE_VOXELS = 500
MIN_IMPLANT_FRACTION = 0.005  # a defect must remove at least 0.5 % of the bone
MAX_ATTEMPTS = 20
# the case-seed step between the redraws of :func:`redraws`: a prime, so nearby seeds' redraws do not meet
RETRY_STRIDE = 7919


class _Bone:
    """The bone voxels of a skull: indices (N, 3) and LPS positions (N, 3) in mm."""

    def __init__(self, image: SkullImage) -> None:
        where = image.metadata.get("source")
        if image.mask.size == 0 or not image.mask.any():
            raise SkullVAEError("the skull mask is empty: no bone to cut a defect from", where)
        self.index = np.argwhere(image.mask)
        if len(self.index) < MIN_BONE_VOXELS:
            raise SkullVAEError(
                f"the skull has only {len(self.index)} bone voxels (need {MIN_BONE_VOXELS}) to cut a defect", where
            )
        affine = image.index_to_physical()
        # float32 keeps 10⁻⁵ mm precision at skull scale and halves the work on 512² volumes.
        self.points = (self.index.astype(np.float32) @ affine[:3, :3].T.astype(np.float32)) + affine[:3, 3].astype(
            np.float32
        )
        # the extremes of the very points the recipes cut (float32), as regions.bone_bounds gives them
        self.lo, self.hi = self.points.min(axis=0), self.points.max(axis=0)
        extent = self.hi - self.lo
        if extent.min() < MIN_EXTENT_MM:
            raise SkullVAEError(
                f"the skull is too small for a defect: its extent is {np.round(extent, 1).tolist()} mm "
                f"(LR, AP, SI), at least {MIN_EXTENT_MM:g} mm needed along each axis",
                where,
            )
        self.centre = 0.5 * (self.lo + self.hi)


def _split(image: SkullImage, bone: _Bone, inside: np.ndarray, **metadata) -> tuple[SkullImage, SkullImage]:
    implant = np.zeros(image.shape, dtype=bool)
    hit = bone.index[inside]
    implant[hit[:, 0], hit[:, 1], hit[:, 2]] = True
    defective = image.mask & ~implant
    return image.with_mask(defective, **metadata), image.with_mask(implant, **metadata)


def _retry(image: SkullImage, bone: _Bone, seed: int, draw, what: str, **metadata):
    """Draw defect regions until one removes enough bone; (defective, implant)."""
    if int(seed) < 0:
        raise SkullVAEError(f"the defect seed must be a non-negative integer, got {seed}")
    need = max(1, int(np.ceil(MIN_IMPLANT_FRACTION * len(bone.index))))
    for attempt in range(MAX_ATTEMPTS):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), attempt]))
        inside = draw(rng)
        if int(inside.sum()) >= need:
            return _split(image, bone, inside, defect=what, defect_seed=int(seed), defect_attempt=attempt, **metadata)
    raise SkullVAEError(
        f"could not place a {what} defect that removes bone in {MAX_ATTEMPTS} tries (is this a whole skull?)",
        image.metadata.get("source"),
    )


def _vault_site(bone: _Bone, rng: np.random.Generator, recipe: CranialRecipe = CRANIAL):
    """A point on the outer upper vault, random side, and the outward unit normal there."""
    half = 0.5 * (bone.hi - bone.lo)
    side = rng.choice((-1.0, 1.0))
    azimuth = np.deg2rad(rng.uniform(-recipe.azimuth_deg, recipe.azimuth_deg))  # lateral axis -> front/back
    elevation = np.deg2rad(rng.uniform(*recipe.elevation_deg))  # above the horizontal through mid-height
    # The direction, squashed by the bounding box so the angles spread evenly over an oblong skull.
    ray = np.array([side * np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    ray = ray * half
    ray /= np.linalg.norm(ray)
    rel = bone.points - bone.centre
    dist = np.linalg.norm(rel, axis=1)
    near_ray = rel @ ray >= np.cos(np.deg2rad(recipe.site_cone_deg)) * np.maximum(dist, 1e-6)
    if not near_ray.any():
        return None
    surface = bone.points[near_ray][np.argmax(dist[near_ray])]
    normal = (surface - bone.centre) / np.linalg.norm(surface - bone.centre)
    return surface, normal


def _tangents(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.array([0.0, 0.0, 1.0]) if abs(normal[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    t1 = np.cross(normal, helper)
    t1 /= np.linalg.norm(t1)
    return t1, np.cross(normal, t1)


def _skullfix_region(rng, local, recipe: CranialRecipe = CRANIAL) -> np.ndarray:
    """A box plus cylinders on its edges, cut along the normal (``recipe``'s sizes)."""
    a, b, d = local
    h1, h2 = rng.uniform(*recipe.box_half_mm, size=2)
    depth_ok = (d >= recipe.cut_mm[0]) & (d <= recipe.cut_mm[1])
    inside = (np.abs(a) <= h1) & (np.abs(b) <= h2)
    for _ in range(rng.integers(recipe.cylinders[0], recipe.cylinders[1] + 1)):
        on_a = rng.random() < 0.5
        ca = rng.choice((-h1, h1)) if on_a else rng.uniform(-h1, h1)
        cb = rng.uniform(-h2, h2) if on_a else rng.choice((-h2, h2))
        radius = rng.uniform(*recipe.cylinder_radius_mm)
        inside |= (a - ca) ** 2 + (b - cb) ** 2 <= radius**2
    return inside & depth_ok


def _skullbreak_region(rng, local, recipe: CranialRecipe = CRANIAL) -> np.ndarray:
    """A smooth union (log-sum-exp soft minimum) of balls (``recipe``'s sizes)."""
    a, b, d = local
    k = recipe.smooth_mm
    terms = []
    for _ in range(rng.integers(recipe.balls[0], recipe.balls[1] + 1)):
        ca, cb = rng.uniform(-recipe.ball_offset_mm, recipe.ball_offset_mm, size=2)
        cd = rng.uniform(*recipe.ball_depth_mm)
        radius = rng.uniform(*recipe.ball_radius_mm)
        terms.append(-(np.sqrt((a - ca) ** 2 + (b - cb) ** 2 + (d - cd) ** 2) - radius) / k)
    stacked = np.stack(terms)
    peak = stacked.max(axis=0)
    soft_min = -k * (peak + np.log(np.exp(stacked - peak).sum(axis=0)))
    return soft_min <= 0.0


def _irregular_region(rng, local, recipe: CranialRecipe = CRANIAL) -> np.ndarray:
    """An irregular star-shaped outline (:mod:`.outline`), cut along the normal like the SkullFix box."""
    outline = draw_outline(lambda low, high: float(rng.uniform(low, high)), recipe)
    return irregular_inside(*local, outline, recipe, np)


_REGIONS = {"skullfix": _skullfix_region, "skullbreak": _skullbreak_region, "irregular": _irregular_region}


def cranial_defect(image: SkullImage, seed: int, style: str = "skullfix") -> tuple[SkullImage, SkullImage]:
    """Cut a cranial defect from the upper vault of a complete skull.

    Args:
        image: complete skull (any spacing/direction).
        seed: non-negative integer; the same seed gives the same defect.
        style: "skullfix" (box plus cylinders), "skullbreak" (smooth union of balls) or
            "irregular" (a star-shaped outline cut along the normal).

    Returns:
        (defective, implant) on ``image``'s geometry; ``defective | implant == image.mask``.
    """
    if style not in CRANIAL_STYLES:
        raise SkullVAEError(f"cranial defect style must be one of {', '.join(CRANIAL_STYLES)}, got {style!r}")
    bone = _Bone(image)
    region = _REGIONS[style]
    reach_mm = CRANIAL.reach_mm

    def draw(rng):
        site = _vault_site(bone, rng)
        if site is None:
            return np.zeros(len(bone.points), dtype=bool)
        surface, normal = site
        t1, t2 = _tangents(normal)
        rel = bone.points - surface
        near = np.einsum("ij,ij->i", rel, rel) <= reach_mm**2  # no defect shape reaches further
        inside = np.zeros(len(rel), dtype=bool)
        rel = rel[near]
        inside[near] = region(rng, (rel @ t1, rel @ t2, rel @ normal))
        return inside

    return _retry(image, bone, seed, draw, "cranial", defect_style=style)


def redraws(
    image: SkullImage, seed: int, styles: Sequence[str], tries: int, first: int = 0
) -> Iterator[tuple[str, SkullImage, SkullImage]]:
    """Cranial defects of ``image`` drawn again and again for one case seed, until the caller has one it accepts.

    Draw ``a`` (``a < tries``) takes the seed ``seed + RETRY_STRIDE · a`` and the style
    ``styles[(first + a) % len(styles)]``, so styles take turns and a given (seed, draw) is always the same
    cut. Yields (style, defective, implant); a draw the generator cannot place (:class:`SkullVAEError`) is
    skipped. Used where a cut must meet a rule of its own (away from a hole the skull already has)."""
    for attempt in range(tries):
        style = styles[(first + attempt) % len(styles)]
        try:
            defective, implant = cranial_defect(image, seed + RETRY_STRIDE * attempt, style=style)
        except SkullVAEError:
            continue
        yield style, defective, implant


def facial_defect(image: SkullImage, seed: int, recipe: FacialRecipe = FACIAL) -> tuple[SkullImage, SkullImage]:
    """Cut the face off a complete skull: a slab from the front of its bounding box.

    The slab (``recipe``, :mod:`.recipes`) spans a depth from the most anterior bone (minimum
    LPS y) backwards, a random lower part of the skull's height (LPS z) and a random part of its
    width (LPS x), placed at random within the width.

    Returns:
        (defective, implant) on ``image``'s geometry; ``defective | implant == image.mask``.
    """
    bone = _Bone(image)
    extent = bone.hi - bone.lo
    x, y, z = bone.points.T

    def draw(rng):
        height = rng.uniform(*recipe.height) * extent[2]
        width = rng.uniform(*recipe.width) * extent[0]
        centre_x = bone.centre[0] + rng.uniform(-0.5, 0.5) * (extent[0] - width)
        depth = rng.uniform(*recipe.depth_mm)  # drawn last: a fixed depth leaves the earlier draws as they were
        return (y <= bone.lo[1] + depth) & (z <= bone.lo[2] + height) & (np.abs(x - centre_x) <= 0.5 * width)

    return _retry(image, bone, seed, draw, "facial")


def case_seed(seed: int, case_id: str) -> int:
    """A per-case defect seed from a run seed and a case id (stable across runs and orderings)."""
    digest = zlib.crc32(str(case_id).encode("utf-8"))
    return int(np.random.SeedSequence([int(seed), digest]).generate_state(1)[0])
