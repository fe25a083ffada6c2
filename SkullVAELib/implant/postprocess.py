"""The one post-processing every implant source shares.

Closing (a ball of ``closing_mm``), thin-shell removal (voxels with few neighbours; an axis whose
voxel is longer than ``shell_plate_mm`` leaves the count), keep the pieces that touch the patient's
bone or come within ``bone_gap_mm`` of it, drop islands smaller than ``min_island_mm3``, drop every
piece farther than ``max_gap_mm`` from the main (largest) piece unless it is at least
``second_defect_fraction`` × the main piece (a second defect), and pieces below
``min_piece_fraction`` × the largest. Last, specks that meet the rest only at an edge or a corner
(``island_connectivity``) are dropped. Works on the implant's bounding box only, so its cost follows
the implant, not the scan. The patient's bone is never added to: the result is disjoint from
``skull.mask``.

Why the gap bound: an implant fills one hole, so every part of it lies within the hole; a piece
tens of millimetres away (a plugged foramen of the skull base, a misplaced blob) is not implant,
and even a small one dominates the surface distance (HD95). The pieces of a true implant lie
within a few millimetres of each other (SkullFix facial implants: ≤ 5 mm), so 20 mm is a wide
margin.

Why the tolerance at the bone: a learned implant can stop a voxel short of the bone all round. On
SkullFix test case 073 (a facial defect, one pass of the CPU recipe's refiner) a 73 ml implant that
held 82 % of the true one lay 0.9 mm off the bone everywhere, and strict touching dropped it: the
patient got an empty implant. A piece that is not the implant (a blob in the skull's hollow) lies
farther off than 2 mm.

Why specks joined only at an edge or corner go: the rules above judge 26-connected pieces, so a voxel
that meets the implant at a corner of the rim belongs to it. A surface mesh (the printable STL) and
Slicer's islands see faces only: on 46 of the 60 ``skullfix_test`` skulls the rim fit's implant carried
1-56 such specks beside the bone (1,155 voxels in all), each its own tiny shell in the
STL (docs/results/issue-24-2026-12-06.md, "Specks at the rim").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.implant.cleanup import binary_closing, bounding_box, component_sizes, remove_thin_shells
from SkullVAELib.implant.components import CONNECTIVITY, label_pieces
from SkullVAELib.io.image import SkullImage


@dataclass(frozen=True)
class PostprocessConfig:
    """Settings of :func:`postprocess_implant` (lengths in mm, volumes in mm³)."""

    closing_mm: float = 1.0
    min_island_mm3: float = 50.0
    min_piece_fraction: float = 0.0  # pieces below this × the largest are dropped (0: keep all)
    max_gap_mm: float = 20.0  # pieces farther than this from the main piece are dropped (inf: keep all) ...
    second_defect_fraction: float = 0.5  # ... unless at least this × the main piece (a second defect)
    bone_gap_mm: float = 2.0  # a piece this close to the bone counts as touching it (0: adjacent voxels only)
    # islands under min_island_mm3 are judged by pieces joined through faces (6), or edges (18), or corners
    # too (26: a speck that meets the implant at a corner stays); the largest part of each piece always stays
    island_connectivity: int = 6
    # a voxel axis longer than this (mm) leaves the thin-shell count: one such voxel is most of a vault
    # plate (5-7 mm) already; on 5 mm slices the 26-neighbour count dropped plates lying across them
    # (validation at 0.8 × 0.8 × 5 mm: +0.013 / +0.022 DSC without it; at 4 mm slices dropping it lost 0.003)
    shell_plate_mm: float = 4.5

    def __post_init__(self) -> None:
        if self.island_connectivity not in CONNECTIVITY:
            raise SkullVAEError(f"island_connectivity must be one of {CONNECTIVITY}, got {self.island_connectivity!r}")


def ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """bool structuring element: the voxels within ``radius_mm`` of the centre (anisotropic ``spacing``, mm)."""
    radius = np.maximum(np.round(radius_mm / np.asarray(spacing)).astype(int), 1)
    grid = np.ogrid[tuple(slice(-int(r), int(r) + 1) for r in radius)]
    return sum((g * s) ** 2 for g, s in zip(grid, spacing, strict=True)) <= radius_mm**2 + 1e-6


def postprocess_implant(implant: np.ndarray, skull: SkullImage, cfg: PostprocessConfig | None = None) -> np.ndarray:
    """The cleaned implant: bool (I, J, K) on ``skull``'s grid, disjoint from its bone.

    Args:
        implant: bool (I, J, K) proposal of any source.
        skull: the patient's defective skull (its mask is never modified).
    """
    cfg = cfg or PostprocessConfig()
    reach_mm = max(cfg.closing_mm, cfg.bone_gap_mm)  # the bone the rules read lies within the box
    box = bounding_box(implant, margin=int(np.ceil(reach_mm / skull.spacing.min())) + 2)
    if box is None:
        return np.zeros_like(skull.mask)  # the mask's memory order: mixed-order ops cost 1 s each
    crop, bone = implant[box], skull.mask[box]
    crop = binary_closing(crop, ball(cfg.closing_mm, skull.spacing)) & ~bone
    crop = remove_thin_shells(crop, spacing=skull.spacing, plate_mm=cfg.shell_plate_mm)
    # The rules below drop whole pieces, so one labelling serves them all: a dropped piece gets
    # size 0 (removing pieces neither joins nor splits the others).
    labels, sizes = component_sizes(crop)
    sizes[sizes < cfg.min_island_mm3 / skull.voxel_volume_mm3] = 0
    touching = _pieces_touching_bone(labels, crop, bone)
    if cfg.bone_gap_mm > 0:
        touching |= _pieces_near_bone(labels, sizes * ~touching, bone, skull.spacing, cfg.bone_gap_mm)
    sizes[~touching] = 0
    if np.isfinite(cfg.max_gap_mm):
        sizes = _near_pieces(labels, sizes, skull.spacing, cfg.max_gap_mm, cfg.second_defect_fraction)
    if cfg.min_piece_fraction > 0:
        sizes[sizes < cfg.min_piece_fraction * sizes.max()] = 0
    kept = (sizes > 0)[labels]
    if cfg.island_connectivity != 26:
        kept = without_specks(kept, labels, cfg.min_island_mm3 / skull.voxel_volume_mm3, cfg.island_connectivity)
    out = np.zeros_like(skull.mask)
    out[box] = kept
    return out


def without_specks(kept: np.ndarray, labels: np.ndarray, min_voxels: float, connectivity: int = 6) -> np.ndarray:
    """``kept`` (bool (I, J, K)) less its specks: the parts joined to the rest only more loosely than
    ``connectivity`` allows (6: through faces) with fewer than ``min_voxels`` voxels. ``labels`` is the
    26-connected labelling ``kept`` was cut from; the largest part of each of its pieces always stays, so
    a piece is never lost whole, only thinned of its specks."""
    parts, n = label_pieces(kept, connectivity)
    if n <= 1:
        return kept
    part_sizes = np.bincount(parts.ravel(order="K"), minlength=n + 1)
    piece_of_part = np.zeros(n + 1, dtype=np.int64)
    piece_of_part[parts[kept]] = labels[kept]  # a part lies inside one piece
    largest = np.zeros(int(piece_of_part.max()) + 1, dtype=np.int64)
    np.maximum.at(largest, piece_of_part[1:], part_sizes[1:])
    keep = (part_sizes >= min_voxels) | (part_sizes == largest[piece_of_part])
    keep[0] = False
    return keep[parts]


def _pieces_touching_bone(labels: np.ndarray, crop: np.ndarray, bone: np.ndarray) -> np.ndarray:
    """bool (n + 1,): which pieces of ``crop`` (``labels``: its 26-connected labelling) touch ``bone``.

    One labelling of crop ∪ bone: a piece of crop is maximal, so it shares a component with bone
    exactly when one of its voxels touches bone; the same pieces as dilating the bone, at a
    quarter of the time on a SkullFix defect's box.
    """
    touching = np.zeros(int(labels.max(initial=0)) + 1, dtype=bool)
    union, n = label_pieces(crop | bone)
    if n:
        with_bone = np.zeros(n + 1, dtype=bool)  # union components that hold bone (scattered: no sort)
        with_bone[union[bone]] = True
        touching[labels[crop]] = with_bone[union[crop]]  # a piece lies in one union component
    touching[0] = False
    return touching


def _pieces_near_bone(labels, candidates, bone: np.ndarray, spacing, gap_mm: float) -> np.ndarray:
    """bool (n + 1,): which pieces of non-zero ``candidates`` (voxels per label of ``labels``) come within
    ``gap_mm`` of ``bone`` (all on one box; ``spacing`` mm): a KD-tree of the bone's surface near each
    piece. Only pieces that touch nothing are asked, and an implant's pieces touch the bone (the rim
    fit's by construction), so the usual cost is nil."""
    near = np.zeros(len(candidates), dtype=bool)
    if not np.any(candidates):
        return near
    spacing = np.asarray(spacing, dtype=np.float64)
    reach = np.ceil(gap_mm / spacing).astype(int) + 1
    objects = ndimage.find_objects(labels)
    for lab in np.flatnonzero(candidates):
        lo = np.array([max(s.start - r, 0) for s, r in zip(objects[lab - 1], reach, strict=True)])
        window = tuple(slice(a, s.stop + r) for a, s, r in zip(lo, objects[lab - 1], reach, strict=True))
        if not bone[window].any():
            continue
        tree = cKDTree(_surface_points(bone[window], lo, spacing))
        piece = _surface_points(labels[window] == lab, lo, spacing)
        within = np.nextafter(gap_mm, np.inf)  # the tree's bound is strict; a piece at gap_mm is within it
        near[lab] = bool(np.isfinite(tree.query(piece, distance_upper_bound=within)[0]).any())
    return near


def _surface_points(piece: np.ndarray, offset: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """(N, 3) mm positions (in the grid's own axes) of a piece's surface voxels; ``offset`` its box start."""
    surface = piece & ~ndimage.binary_erosion(piece)
    return (np.argwhere(surface) + offset) * spacing


def piece_gaps(mask: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, voxels per piece, gap mm per piece) of the 26-connected pieces of ``mask`` (bool (I, J, K)).

    The gap of a piece is the distance between its nearest voxel and the main (largest) piece
    (0 for the main piece itself); index 0 (the background) has size 0 and gap 0. The grid's
    direction is a rotation, so distances on index × spacing are physical distances.
    """
    labels, sizes = component_sizes(mask)
    return labels, sizes, _gaps(labels, sizes, spacing)


def _gaps(labels: np.ndarray, sizes: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Gap mm per label (:func:`piece_gaps`) among the pieces of non-zero ``sizes``; 0 for the others."""
    gaps = np.zeros(len(sizes))
    if np.count_nonzero(sizes) < 2:
        return gaps
    spacing = np.asarray(spacing, dtype=np.float64)
    main = int(np.argmax(sizes))
    objects = ndimage.find_objects(labels)
    box = objects[main - 1]
    tree = cKDTree(_surface_points(labels[box] == main, np.array([s.start for s in box]), spacing))
    for lab in np.flatnonzero(sizes):
        if lab != main:
            box = objects[lab - 1]
            points = _surface_points(labels[box] == lab, np.array([s.start for s in box]), spacing)
            gaps[lab] = float(tree.query(points)[0].min()) if len(points) else 0.0
    return gaps


def _near_pieces(labels, sizes, spacing, max_gap_mm: float, second_defect_fraction: float) -> np.ndarray:
    """``sizes`` with 0 for the pieces :func:`drop_far_pieces` drops (a new array)."""
    keep = (_gaps(labels, sizes, spacing) <= max_gap_mm) | (sizes >= second_defect_fraction * sizes.max())
    return np.where(keep, sizes, 0)


def drop_far_pieces(
    mask: np.ndarray, spacing: np.ndarray, max_gap_mm: float, second_defect_fraction: float = 0.5
) -> np.ndarray:
    """``mask`` (bool (I, J, K)) without the pieces farther than ``max_gap_mm`` from the main piece,
    except pieces of at least ``second_defect_fraction`` × the main piece's voxels (a new array; the
    pieces are labelled on ``mask``'s bounding box only)."""
    out = np.zeros_like(mask)
    box = bounding_box(mask)
    if box is not None:
        labels, sizes = component_sizes(mask[box])
        out[box] = _near_pieces(labels, sizes, spacing, max_gap_mm, second_defect_fraction)[labels] > 0
    return out


def second_defects(
    mask: np.ndarray, skull: SkullImage, max_gap_mm: float, fraction: float
) -> tuple[np.ndarray, str | None]:
    """(``mask`` without the pieces :func:`drop_far_pieces` drops with ``fraction`` as ``second_defect_fraction``,
    a one-line note for the user on what was left out, or None): the union of several holes' implants, where a
    far one is a second defect's only when it holds ``fraction`` of the largest one's voxels."""
    kept = drop_far_pieces(mask, skull.spacing, max_gap_mm, fraction)
    left_out = (np.count_nonzero(mask) - np.count_nonzero(kept)) * skull.voxel_volume_mm3 / 1000.0
    if left_out <= 0:
        return kept, None
    return kept, (
        f"a filled gap of {left_out:.1f} cm³ more than {max_gap_mm:g} mm from the implant was left out "
        f"(under {fraction:g} of its volume: thin bone or a foramen, not a second defect)"
    )
