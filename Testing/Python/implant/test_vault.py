"""implant.vault: the vault's directions, and the pieces of bone apart from the skull that lie over it."""

from __future__ import annotations

import numpy as np
import pytest

from SkullVAELib.data.phantoms import make_phantom
from SkullVAELib.implant.raycast import cranial_centre
from SkullVAELib.implant.vault import SEPARATE_PIECE_MM3, on_vault, without_vault_pieces


@pytest.fixture(scope="module")
def skull():
    return make_phantom(3, (64, 72, 60), (3.2, 3.2, 3.2))  # room behind the occiput and below the jaw


def _box(skull, lo_mm, hi_mm) -> np.ndarray:
    """bool (I, J, K): the voxels of ``skull``'s grid whose LPS centres lie in the box [lo_mm, hi_mm] (3,) each."""
    axes = [skull.origin[a] + np.arange(n) * skull.spacing[a] for a, n in enumerate(skull.shape)]
    inside = [(ax >= lo) & (ax <= hi) for ax, lo, hi in zip(axes, lo_mm, hi_mm, strict=True)]
    return inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]


def test_the_vault_is_above_the_skull_base_and_outside_the_face():
    up, back, front, down = [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]
    forward_up = [0.0, -np.cos(np.deg2rad(30.0)), np.sin(np.deg2rad(30.0))]  # the forehead
    assert on_vault(np.array([up, back, front, down, forward_up])).tolist() == [True, True, False, False, True]


def test_a_skull_in_one_piece_is_handed_back_as_it_is(skull):
    same, notes = without_vault_pieces(skull)
    assert same is skull and notes == []


def test_a_plate_behind_the_occiput_and_a_speck_go_and_a_piece_below_the_vault_stays(skull):
    """A head rest over the vault's back leaves the rays' skull, and so does a speck under ``SEPARATE_PIECE_MM3``
    (without a note of its own: one is no noisy mask); a block under the jaw (a spine, a jaw apart from the skull)
    stays: it hides nothing of the vault."""
    bone = np.argwhere(skull.mask) * skull.spacing + skull.origin
    top, back, bottom = bone[:, 2].max(), bone[:, 1].max(), bone[:, 2].min()
    centre = cranial_centre(skull)
    rest = _box(skull, (-60.0, back + 5.0, centre[2] - 40.0), (60.0, back + 11.0, centre[2] + 20.0))
    below = _box(skull, (-10.0, -10.0, bottom - 12.0), (10.0, 10.0, bottom - 5.0))
    speck = np.zeros_like(skull.mask)
    speck[tuple(np.round((np.array([0.0, 0.0, top + 6.0]) - skull.origin) / skull.spacing).astype(int))] = True
    assert rest.any() and below.any() and speck.sum() * skull.voxel_volume_mm3 < SEPARATE_PIECE_MM3
    assert not ((rest | below | speck) & skull.mask).any()
    cluttered = skull.with_mask(skull.mask | rest | below | speck)
    vault, notes = without_vault_pieces(cluttered)
    assert np.array_equal(vault.mask, skull.mask | below)
    assert vault.same_geometry(cluttered) and len(notes) == 1 and notes[0].startswith("1 piece(s) of bone (")


def test_the_first_look_in_blocks_finds_what_the_voxels_hold():
    """On fine voxels (0.4 mm: blocks of 3) the first look labels blocks, not voxels: a plate 5 mm behind the skull
    is apart there too and goes; a speck, or a plate 0.4 mm off (one voxel, within a block), counts as part of the
    skull, which comes back as it is (no labelling of the whole scan). The partial blocks at the far faces count."""
    from SkullVAELib.implant.vault import _blocks_any
    from SkullVAELib.io.image import SkullImage

    i, j, k = np.ogrid[:100, :110, :100]
    radius = np.sqrt((i - 50) ** 2 + (j - 45) ** 2 + (k - 50) ** 2) * 0.4  # mm from (50, 45, 50)
    mask = (radius > 12.0) & (radius <= 16.0)  # a 4 mm shell; its back pole at j = 85
    skull = SkullImage(mask, np.zeros(3), np.full(3, 0.4), np.eye(3), {})

    def plate(first_j: int) -> np.ndarray:
        out = np.zeros_like(mask)
        out[35:65, first_j : first_j + 4, 40:60] = True  # 1.6 mm thick, behind the back pole
        return out & ~mask

    behind = plate(85 + 13)  # 5.2 mm off
    vault, notes = without_vault_pieces(skull.with_mask(mask | behind))
    assert np.array_equal(vault.mask, mask) and len(notes) == 1
    close = skull.with_mask(mask | plate(85 + 2))  # one empty voxel between
    assert without_vault_pieces(close)[0] is close
    specked = skull.with_mask(mask.copy())
    specked.mask[50, 45, 50 + 40 + 4] = True  # one voxel 1.6 mm above the vertex
    assert without_vault_pieces(specked)[0] is specked
    corner = np.zeros((7, 5, 4), dtype=bool)
    corner[6, 4, 3] = True  # in the last, partial block of each axis
    assert _blocks_any(corner, [3, 3, 2]).shape == (3, 2, 2) and _blocks_any(corner, [3, 3, 2])[2, 1, 1]
    assert _blocks_any(np.asfortranarray(corner), [3, 3, 2]).sum() == 1


def _flapped(kerf_mm: float) -> tuple:
    """(phantom 1 on 1.4 mm voxels, its bone less a saw kerf of ``kerf_mm`` all round a flap 30° about a direction
    near the vertex, the flap bool (I, J, K), LPS mm offsets (N, 3) of every voxel from the cranial centre)."""
    skull = make_phantom(1, (151, 151, 113), (1.4, 1.4, 1.4))
    affine = skull.index_to_physical()
    offsets = np.indices(skull.shape).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3] - cranial_centre(skull)
    axis = np.array([0.3, 0.2, 0.93]) / np.linalg.norm([0.3, 0.2, 0.93])
    angle = np.degrees(np.arccos(np.clip(offsets @ axis / np.linalg.norm(offsets, axis=1).clip(1e-9), -1, 1)))
    angle = angle.reshape(skull.shape)
    kerf = (angle > 30.0) & (angle < 30.0 + np.degrees(kerf_mm / 75.0))  # the vault lies about 75 mm out there
    flapped = skull.with_mask(skull.mask & ~kerf)
    return flapped, flapped.mask & (angle <= 30.0), offsets.reshape(*skull.shape, 3)


def test_a_bone_flap_behind_its_kerf_stays_and_a_plate_a_sunk_piece_or_a_wide_gap_go():
    """A flap put back in its hole behind a 2.5 mm saw kerf lies in the vault's shell: it stays in the rays' skull
    (before, it was left out as a head rest, and the rim fit filled its place: quality 0.17, "doubtful"). The same
    piece moved 8 mm out (a plate) or 12 mm in (a sunk fragment), or behind a 6 mm gap (a fragment in a wider hole,
    which the rim fit fills better around it), is not in the shell and goes, as before."""
    from SkullVAELib.implant.vault import in_the_shell

    flapped, flap, offsets = _flapped(2.5)
    kept, notes = without_vault_pieces(flapped)
    assert kept is flapped and notes == []
    piece, rest = offsets[flap], offsets[flapped.mask & ~flap]
    assert in_the_shell(piece, rest)
    for moved_mm in (8.0, -12.0):
        assert not in_the_shell(piece * (1.0 + moved_mm / np.linalg.norm(piece, axis=1, keepdims=True)), rest)
    wide, wide_flap, _ = _flapped(6.0)
    assert not in_the_shell(offsets[wide_flap], offsets[wide.mask & ~wide_flap])
    assert not in_the_shell(piece, rest[:10])  # no bone beyond the edge to compare with: not in the shell


def test_inside_the_skull_tells_a_calcification_from_a_piece_beyond_the_bone(skull):
    """A piece whose bone lies under the inner surface of the skull around its direction is inside it (the pineal at
    the centre, a plaque under the vertex); a plate beyond the bone is not."""
    from SkullVAELib.implant.vault import inside_the_skull

    offsets = np.argwhere(skull.mask) * skull.spacing + skull.origin - cranial_centre(skull)
    ball = np.random.default_rng(0).normal(size=(200, 3)) * 2.0
    up = np.array([0.0, 0.0, 1.0])
    vertex = float(np.max(offsets @ up))
    assert inside_the_skull(ball, offsets)  # about the centre
    assert inside_the_skull(ball + up * (vertex - 25.0), offsets)  # under the vertex
    assert not inside_the_skull(ball + up * (vertex + 8.0), offsets)  # beyond it
