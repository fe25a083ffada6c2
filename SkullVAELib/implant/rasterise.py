"""Rasterise a filled hole at the original resolution: every voxel whose direction from the ray
centre falls in the hole's region and whose radius lies between the filled inner and outer radius
(the rim fit's step 4, :mod:`SkullVAELib.implant.rimfit`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from SkullVAELib.implant import raycast
from SkullVAELib.io.image import SkullImage


def rasterise(
    skull: SkullImage, centre: np.ndarray, step_deg: float, region: np.ndarray, r_in: np.ndarray, r_out: np.ndarray
) -> np.ndarray:
    """bool (I, J, K): voxels whose direction lies in ``region`` with r_in ≤ r ≤ r_out, minus bone.

    The region's box is swept in slabs of about ``_SLAB_VOXELS``; only the voxels off the bone whose
    radius lies in the radii's range (± 1 mm) are turned into angles (the filled radii are bilinear
    reads of r_in/r_out, never outside that range), and only those inside the region are read.
    """
    out = np.zeros_like(skull.mask)  # the mask's memory order (Fortran from SimpleITK): cheap to combine
    if not region.any():
        return out
    dirs = raycast.grid_directions(step_deg)[region]
    lo_r, hi_r = float(np.nanmin(r_in[region])) - 1.0, float(np.nanmax(r_out[region])) + 1.0
    corners = np.concatenate([centre + lo_r * dirs, centre + hi_r * dirs])
    box = skull.index_box(corners, margin=2)
    if box is None:
        return out
    affine = skull.index_to_physical()
    lo, hi = np.array([s.start for s in box]), np.array([s.stop for s in box])
    finite = np.isfinite(r_out)  # every radius a bilinear read below returns lies in this range
    # radii outside the region are never used; fill them so bilinear reads stay finite at its edge
    near = ndimage.distance_transform_edt(~finite, return_distances=False, return_indices=True)
    radii = (r_in[tuple(near)], r_out[tuple(near)], np.nanmin(r_in[finite]) - 1.0, np.nanmax(r_out[finite]) + 1.0)
    lin, off = affine[:3, :3].astype(np.float32), (affine[:3, 3] - centre).astype(np.float32)
    step_k = max(1, _SLAB_VOXELS // int((hi[0] - lo[0]) * (hi[1] - lo[1])))
    for k0 in range(int(lo[2]), int(hi[2]), step_k):
        slab = (slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(k0, min(k0 + step_k, int(hi[2]))))
        out[slab] = _rasterise_slab(skull, slab, lin, off, step_deg, region.astype(np.uint8), radii)
    return out


_SLAB_VOXELS = 1 << 21  # voxels of the box handled at once by rasterise (~40 MB of float32 temporaries)


def _rasterise_slab(skull, slab, lin, off, step_deg, region, radii) -> np.ndarray:
    """bool: :func:`rasterise` on one slab (a tuple of slices) of the grid, in the mask's memory
    order (a Fortran mask's slab is worked on as its (K, J, I) transpose: no mixed-order passes)."""
    fin_in, fin_out, r_lo, r_hi = radii
    bone = skull.mask[slab]
    fortran = not bone.flags.c_contiguous and bone.strides[0] < bone.strides[-1]
    ii, jj, kk = (np.arange(s.start, s.stop, dtype=np.float32) for s in slab)
    if fortran:  # axes (k, j, i): C order over them is the mask's memory order
        ii, jj, kk, bone = ii[None, None, :], jj[None, :, None], kk[:, None, None], bone.T
    else:
        ii, jj, kk = ii[:, None, None], jj[None, :, None], kk[None, None, :]
    x, y, z = (lin[a, 0] * ii + lin[a, 1] * jj + lin[a, 2] * kk + off[a] for a in range(3))
    r = np.sqrt(x * x + y * y + z * z)
    block = np.zeros(r.shape, dtype=bool)
    shell = np.flatnonzero((r >= r_lo) & (r <= r_hi) & ~bone)
    if shell.size:
        r_shell, a, b = raycast.to_angles(np.stack([np.take(v, shell) for v in (x, y, z)], axis=-1))
        coords = np.stack(raycast.grid_coordinates(a, b, step_deg))
        # the nearest cell, clamped to the grid (map_coordinates' order 0, mode "nearest")
        cell = [np.clip(np.floor(c + 0.5), 0, n - 1).astype(np.intp) for c, n in zip(coords, region.shape, strict=True)]
        inside = region[cell[0], cell[1]].astype(bool)
        shell, r_shell, coords = shell[inside], r_shell[inside], coords[:, inside]
        lo_val = ndimage.map_coordinates(fin_in, coords, order=1, mode="nearest")
        hi_val = ndimage.map_coordinates(fin_out, coords, order=1, mode="nearest")
        block.ravel()[shell[(r_shell >= lo_val) & (r_shell <= hi_val)]] = True
    return block.T if fortran else block
