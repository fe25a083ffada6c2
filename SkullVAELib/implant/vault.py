"""The vault as seen from the cranial centre: its directions, and the bone apart from the skull its rays must skip.

The rays of the rim fit (:mod:`raycast`) read, per direction, the outermost bone. A piece of bone-like voxels apart
from the skull that lies over its vault (a head rest under the occiput in a binary mask thresholded with it, an
electrode, a device) is then read as the skull's surface: it hides a hole behind it, or bends the rim's outer
radius towards it; a calcification inside the skull hides a hole in front of it, and a mask's noise, specks by the
hundred, does both. :func:`without_vault_pieces` leaves such bone out, every speck wherever it lies; larger pieces
below the vault or in the face's sector (a jaw or a spine apart from the skull) hide none of it and stay, and so does
a piece that lies in the vault's own shell (a bone flap put back, a fragment: its bone no farther out than the
skull's around it).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from SkullVAELib.implant.cleanup import component_sizes
from SkullVAELib.implant.raycast import bone_count, bone_points, cranial_centre
from SkullVAELib.io.image import SkullImage

# The vault, seen from the cranial centre (LPS unit directions): above LOWEST_VAULT_Z, except the
# face's sector in front (anterior, -P) below FACE_TOP_Z. Holes elsewhere (orbits, nose, jaw,
# skull base) are no cranial defect.
LOWEST_VAULT_Z = -0.17  # sin(-10°)
FACE_ANTERIOR_Y, FACE_TOP_Z = -0.7, 0.34  # the face: more than 45° forward and below 20° elevation
# a piece of bone this large (mm³) apart from the skull's largest piece is no speck (SkullFix's 140 defective skulls
# are one piece each but for two specks of 7 mm³ and of one voxel)
SEPARATE_PIECE_MM3 = 50.0
# the first look for such pieces is on blocks of about this size (mm): pieces this close to the skull count as
# part of it, as a piece touching it does, and a skull in one piece costs 0.04-0.1 s and no full-size labels
# (labelling a 512 × 512 × 224 scan whole: 0.5 s and 110 MiB more in a CLI run)
FIRST_LOOK_MM = 1.5
# a piece apart from the skull lies in the vault's shell (a bone flap behind its saw kerf), not over it, when its edge
# lies at most SHELL_MARGIN_MM (mm) beyond the outer surface, or inside the inner surface, of the skull's bone just
# beyond it, across a gap of at most KERF_MM (in_the_shell); a head rest stands off beyond the scalp (4 mm or more)
# and its own half thickness
SHELL_MARGIN_MM = 3.0
KERF_MM = 3.5
EDGE_DEG, SECTOR_DEG = 5.0, 30.0  # the piece's edge and the bone beyond it (degrees from its mean direction); sectors
NOISY_SPECKS = 10  # specks left out are named from this many on (a noisy mask); fewer go without a note
KEPT, SPECK, BEYOND, INSIDE = 0, 1, 2, 3  # what without_vault_pieces does with each piece apart from the skull


def on_vault(directions: np.ndarray) -> np.ndarray:
    """bool (...): which LPS unit ``directions`` (..., 3) from the cranial centre point at the vault."""
    directions = np.asarray(directions, dtype=float)
    y, z = directions[..., 1], directions[..., 2]
    return (z > LOWEST_VAULT_Z) & ~((y < FACE_ANTERIOR_Y) & (z < FACE_TOP_Z))


def without_vault_pieces(skull: SkullImage, min_mm3: float = SEPARATE_PIECE_MM3) -> tuple[SkullImage, list[str]]:
    """(``skull`` less what the vault's rays must not read as its surface, [one line for the user per kind of thing
    left out]); (``skull`` itself, []) where there is none.

    Left out, apart from the skull's largest piece: each piece of ``min_mm3`` or more that reaches into the vault's
    directions from the largest piece's cranial centre and does not lie in its shell (:func:`in_the_shell`: a bone
    flap behind its kerf stays), named a head rest or a device where it lies beyond the skull and a calcification
    where it lies inside it (:func:`inside_the_skull`); and every speck under ``min_mm3``, wherever it lies. One
    speck hides a ray or two, but a mask thresholded with its noise holds hundreds, each read as the outermost bone
    on its ray. The first look is in blocks of about ``FIRST_LOOK_MM`` (a block is bone where any of its voxels is):
    a skull in one piece there costs that look alone, and one with specks alone apart loses their blocks' voxels
    without a labelling of the whole scan (specks within a block of the bone merge with it and stay). Specks are
    named from :data:`NOISY_SPECKS` on."""
    factors = [max(1, int(FIRST_LOOK_MM // s)) for s in skull.spacing]
    block_labels, block_sizes = component_sizes(_blocks_any(skull.mask, factors))
    apart = block_sizes > 0
    apart[int(np.argmax(block_sizes))] = False
    if not apart.any():
        return skull, []
    block_mm3 = block_sizes * float(np.prod(factors)) * skull.voxel_volume_mm3  # at least each piece's own volume
    if not (apart & (block_mm3 >= min_mm3)).any():  # specks alone apart: no piece there is as large on the voxels
        dropped = skull.mask & _block_voxels(apart[block_labels], factors, skull.shape)
        cm3 = np.count_nonzero(dropped) * skull.voxel_volume_mm3 / 1000.0
        return skull.with_mask(skull.mask & ~dropped), _speck_notes(int(np.count_nonzero(apart)), cm3, min_mm3)
    return _without_labelled_pieces(skull, min_mm3)


def _without_labelled_pieces(skull: SkullImage, min_mm3: float) -> tuple[SkullImage, list[str]]:
    """:func:`without_vault_pieces` on the voxels' own pieces, where the first look found a piece apart that may
    be ``min_mm3`` or more (a head rest, a calcification, a bone flap)."""
    labels, sizes = component_sizes(skull.mask)
    largest = int(np.argmax(sizes))
    kind = np.where((sizes > 0) & (sizes < min_mm3 / skull.voxel_volume_mm3), SPECK, KEPT)
    kind[largest] = KEPT
    pieces = np.flatnonzero((sizes > 0) & (kind == KEPT))
    pieces = pieces[pieces != largest]
    if len(pieces):  # a piece apart from the skull, not a speck: over the vault and off its shell, or not
        main = skull.with_mask(labels == largest)
        centre = cranial_centre(main)  # the skull's own, not pulled by the pieces
        skull_offsets = bone_points(main, every=max(bone_count(main.mask) // 50_000, 1)) - centre
        boxes, affine = ndimage.find_objects(labels), skull.index_to_physical()
        for label in pieces:
            box = boxes[label - 1]
            points = (np.argwhere(labels[box] == label) + [b.start for b in box]) @ affine[:3, :3].T + affine[:3, 3]
            offsets = points - centre
            over_vault = on_vault(offsets / np.linalg.norm(offsets, axis=1, keepdims=True).clip(1e-9)).any()
            if over_vault and not in_the_shell(offsets, skull_offsets):
                kind[label] = INSIDE if inside_the_skull(offsets, skull_offsets) else BEYOND
    if not (kind != KEPT).any():
        return skull, []
    volumes_mm3 = sizes * skull.voxel_volume_mm3
    notes = _left_out_notes(kind, volumes_mm3)
    specks = kind == SPECK
    notes += _speck_notes(int(np.count_nonzero(specks)), float(volumes_mm3[specks].sum()) / 1000.0, min_mm3)
    return skull.with_mask(skull.mask & (kind == KEPT)[labels]), notes


def _left_out_notes(kind: np.ndarray, volumes_mm3: np.ndarray) -> list[str]:
    """One line per kind of piece :func:`without_vault_pieces` left out beyond or inside the skull (``kind`` (n + 1,)
    per piece label, ``volumes_mm3`` (n + 1,) each piece's volume); specks have their own (:func:`_speck_notes`)."""
    notes = []
    for what, where, why in (
        (BEYOND, "apart from the skull, over its vault", "a head rest or a device?"),
        (INSIDE, "inside the skull, apart from it", "a calcification?"),
    ):
        count = int(np.count_nonzero(kind == what))
        if count:
            cm3 = float(volumes_mm3[kind == what].sum()) / 1000.0
            notes.append(
                f"{count} piece(s) of bone ({cm3:.1f} cm³) {where}, were left out of the rim fit ({why}); the "
                "implant is fitted to the skull alone, clear of them"
            )
    return notes


def _speck_notes(count: int, cm3: float, min_mm3: float) -> list[str]:
    """The line on ``count`` specks of ``cm3`` left out, from :data:`NOISY_SPECKS` on (fewer: no line)."""
    if count < NOISY_SPECKS:
        return []
    return [
        f"{count} specks of bone apart from the skull (each under {min_mm3:.0f} mm³, {cm3:.2f} cm³ in all) were left "
        "out of the rim fit (noise in the mask?); the completed skull keeps them"
    ]


def _block_voxels(blocks: np.ndarray, factors: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """bool ``shape``: each voxel set where its block in ``blocks`` (bool, one cell per block of ``factors``
    voxels, as :func:`_blocks_any` makes them) is set."""
    out = blocks
    for axis, step in enumerate(factors):
        if step > 1:
            out = np.repeat(out, step, axis=axis)
    return out[tuple(slice(0, n) for n in shape)]


def inside_the_skull(piece: np.ndarray, skull: np.ndarray) -> bool:
    """Whether a piece of bone at ``piece`` (N, 3) mm from the cranial centre lies inside the skull (a
    calcification): its median distance from the centre under the inner surface (5th percentile) of the skull's bone
    at ``skull`` (M, 3) mm within 20° of the piece's mean direction (all of it, for a piece about the centre)."""
    radii = np.linalg.norm(piece, axis=1).clip(1e-9)
    skull_radii = np.linalg.norm(skull, axis=1).clip(1e-9)
    mean = (piece / radii[:, None]).mean(axis=0)
    near = np.ones(len(skull), dtype=bool)
    if np.linalg.norm(mean) > 0.5:
        near = skull @ (mean / np.linalg.norm(mean)) > np.cos(np.radians(20.0)) * skull_radii
    if np.count_nonzero(near) < 3:
        return False
    return float(np.median(radii)) < float(np.percentile(skull_radii[near], 5))


def in_the_shell(piece: np.ndarray, skull: np.ndarray) -> bool:
    """Whether a piece of bone at ``piece`` (N, 3) mm from the cranial centre lies in the skull's shell, in its hole
    behind a narrow gap: a bone flap put back behind its saw kerf.

    Seen from the centre, about the piece's mean direction, the piece and the skull's bone at ``skull`` (M, 3) mm
    from the centre are cut into sectors of :data:`SECTOR_DEG`. In each sector the piece's edge (its outermost
    :data:`EDGE_DEG`) is set against the skull's bone just beyond it (the next :data:`EDGE_DEG`): the gap between
    them, and the edge's median distance from the centre against the outer and inner surfaces of that bone (its
    95th and 5th percentiles). Over the sectors holding both (3 points each, at least half of all), the piece lies
    in the shell when the median gap is at most :data:`KERF_MM` and its edge lies at most :data:`SHELL_MARGIN_MM`
    beyond the outer and inside the inner surface. A head rest stands off the shell; a fragment sunk below it, or
    one in a wider hole, is read as before (left out, the hole filled around it).
    """
    radii = np.linalg.norm(piece, axis=1).clip(1e-9)
    axis = (piece / radii[:, None]).mean(axis=0)
    axis /= max(float(np.linalg.norm(axis)), 1e-9)
    skull_radii = np.linalg.norm(skull, axis=1).clip(1e-9)
    first = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    first /= np.linalg.norm(first)
    second = np.cross(axis, first)

    def polar(points: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(degrees from the axis, sector index) of ``points``."""
        angle = np.degrees(np.arccos(np.clip(points @ axis / lengths, -1.0, 1.0)))
        azimuth = np.degrees(np.arctan2(points @ second, points @ first)) % 360.0
        return angle, (azimuth // SECTOR_DEG).astype(int)

    angle, sector = polar(piece, radii)
    skull_angle, skull_sector = polar(skull, skull_radii)
    gaps, heights, depths = [], [], []
    for k in range(int(360 // SECTOR_DEG)):
        mine = sector == k
        if np.count_nonzero(mine) < 3:
            continue
        edge_deg = float(angle[mine].max())
        edge = radii[mine & (angle > edge_deg - EDGE_DEG)]
        beyond = (skull_sector == k) & (skull_angle > edge_deg) & (skull_angle <= edge_deg + EDGE_DEG)
        if np.count_nonzero(beyond) < 3:
            continue
        gaps.append(np.radians(float(skull_angle[beyond].min()) - edge_deg) * float(np.median(edge)))
        heights.append(float(np.median(edge)) - float(np.percentile(skull_radii[beyond], 95)))
        depths.append(float(np.median(edge)) - float(np.percentile(skull_radii[beyond], 5)))
    if len(gaps) < 360 // SECTOR_DEG // 2:
        return False
    return (
        float(np.median(gaps)) <= KERF_MM
        and float(np.median(heights)) <= SHELL_MARGIN_MM
        and float(np.median(depths)) >= -SHELL_MARGIN_MM
    )


def _blocks_any(mask: np.ndarray, factors: list[int]) -> np.ndarray:
    """bool (⌈I / f0⌉, ⌈J / f1⌉, ⌈K / f2⌉): whether any voxel of each block of ``factors`` voxels of ``mask`` (bool
    (I, J, K)) is set, the last partial blocks included. Hand-written (numpy has no block reduction that keeps a
    partial block): the slowest axis first, so each pass reads whole planes of the mask's memory order."""
    out = mask
    for axis in sorted(range(3), key=lambda a: -mask.strides[a]):
        step = factors[axis]
        if step <= 1:
            continue
        index = [slice(None)] * 3
        index[axis] = slice(0, None, step)
        reduced = out[tuple(index)].copy(order="K")
        for offset in range(1, step):
            index[axis] = slice(offset, None, step)
            part = out[tuple(index)]
            target = [slice(None)] * 3
            target[axis] = slice(0, part.shape[axis])
            reduced[tuple(target)] |= part
        out = reduced
    return out
