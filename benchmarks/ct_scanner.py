"""A SkullFix skull as a CT scanner gives it: blurred, noisy, a diploë under the threshold, a clip (issue 24 §1).

Not a timing. For each pair (``--ids``, ``--defects``, ``--seeds`` as in ``rimfit_cases.py``) and each ``--scans``
setting (:data:`SCANS`): a CT in HU is made of the defective skull on its own grid (air -1000 HU; the head's soft
tissue 40 HU, the skull's inside and a 5 mm scalp of the complete skull, so a brain lies under the hole; the bone's
outer and inner tables ``CORTEX_MM`` deep at 1600 HU, the diploë between them at the setting's value; a scanner's
point-spread as a Gaussian (its σ in mm); white noise; optionally a titanium clip (3000 HU, 8 × 3 × 3 mm) on the
bone 15 mm from the hole with streaks through it), written as int16 NRRD, read with ``skullvae complete``'s reading
(a CT thresholded at 300 HU by default) and completed by the default ``Completer``. The implant is scored against
the true implant on the same grid. With ``--as-mask`` the CT is handed over as a user's threshold segmentation of
it would be: its voxels ≥ ``--mask-hu`` (300) as a uint8 mask, read as a mask (a diploë under it leaves a hollow
mask); ``--no-join`` leaves such a mask's tables apart (``RimFitConfig.join_hollow``: the build before it). One JSON
line a pair and setting, then a summary per setting::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ct_scanner.py --ids 056-063 --defects cranial,vault --seeds 0
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ct_scanner.py --ids 056-063 --scans thin-diploe --as-mask
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from _cases import add_case_arguments, selected_cases
from scipy import ndimage

from SkullVAELib.evaluation.metrics import dice, hd95
from SkullVAELib.implant.cleanup import bounding_box
from SkullVAELib.io.skull_input import SkullReading
from SkullVAELib.pipeline.completer import Completer
from SkullVAELib.pipeline.settings import CompletionSettings

#: name → (blur σ mm, noise HU, diploë HU, metal clip): an ideal CT, a head CT's bone kernel, a soft kernel or thick
#: slices, a skull whose diploë falls under the threshold (a child's, an osteoporotic one), the same on a low-dose
#: scan's noise, a clip at the rim
SCANS = {
    "ideal": (0.0, 0.0, 1600.0, False),
    "typical": (0.45, 20.0, 700.0, False),
    "soft": (0.9, 10.0, 700.0, False),
    "thin-diploe": (0.45, 20.0, 200.0, False),
    "thin-noisy": (0.45, 50.0, 200.0, False),
    "metal": (0.45, 20.0, 700.0, True),
}
CORTEX_MM = 1.2
SCALP_MM = 5.0


def head_tissue(complete: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """(I, J, K) bool: the skull's inside, slice by slice along k, and a scalp ``SCALP_MM`` about its bone."""
    box = around(complete, spacing, SCALP_MM + 1.0)
    near = ndimage.distance_transform_edt(~complete[box], sampling=spacing) <= SCALP_MM
    inside = np.zeros_like(complete)
    for k in range(near.shape[2]):
        near[:, :, k] = ndimage.binary_fill_holes(near[:, :, k])
    inside[box] = near
    return inside


def around(mask: np.ndarray, spacing: np.ndarray, margin_mm: float) -> tuple[slice, ...]:
    """The index box of ``mask``'s voxels grown by ``margin_mm`` (within the grid)."""
    return bounding_box(mask, margin=[int(g) for g in np.ceil(margin_mm / spacing)])


def clip_box(defective: np.ndarray, implant: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a titanium clip's voxels, its centre (3,) index): an 8 × 3 × 3 mm block about a point within 1.5 mm outside
    the bone, ≈ 15 mm from the hole."""
    from_hole = ndimage.distance_transform_edt(~implant, sampling=spacing)
    outside = ndimage.distance_transform_edt(~defective, sampling=spacing)
    surface = (np.abs(from_hole - 15.0) < 1.0) & (outside > 0) & (outside <= 1.5)
    spots = np.argwhere(surface)
    centre = spots[len(spots) // 2]
    grid = np.indices(defective.shape, sparse=True)
    offsets = [(g - c) * s for g, c, s in zip(grid, centre, spacing, strict=True)]
    clip = (np.abs(offsets[0]) <= 4.0) & (np.abs(offsets[1]) <= 1.5) & (np.abs(offsets[2]) <= 1.5)
    return clip & ~defective, centre


def streaks(shape: tuple[int, ...], centre: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(I, J, K) float32 HU: dark and bright streaks fanning out of ``centre`` in each axial slice within 6 mm of
    it (a metal artefact's beam hardening and photon starvation), ±400 HU fading over 60 mm."""
    out = np.zeros(shape, np.float32)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    di, dj = (i - centre[0]) * spacing[0], (j - centre[1]) * spacing[1]
    angle, distance = np.arctan2(dj, di), np.hypot(di, dj)
    phases = rng.uniform(0, 2 * np.pi, 2)
    pattern = 400.0 * np.cos(6 * angle + phases[0]) * np.cos(3 * angle + phases[1]) * np.exp(-distance / 60.0)
    for k in range(shape[2]):
        if abs(k - centre[2]) * spacing[2] <= 6.0:
            out[:, :, k] = pattern
    return out


def anatomy(case) -> tuple[np.ndarray, tuple[slice, ...], np.ndarray]:
    """(the head's soft tissue (I, J, K) bool, the bone's box, the bone's depth (mm) in it) of ``case``, which
    every setting of one case shares."""
    bone, spacing = case.defective.mask, case.defective.spacing
    box = around(bone, spacing, 1.0)
    return head_tissue(case.complete, spacing), box, ndimage.distance_transform_edt(bone[box], sampling=spacing)


def scanner_ct(case, setting: str, rng: np.random.Generator, head=None) -> sitk.Image:
    """An int16 CT (HU) of ``case``'s defective skull on its grid, as :data:`SCANS` ``setting`` scans it
    (``head``: the case's :func:`anatomy`, made here when not given)."""
    blur, noise, diploe, metal = SCANS[setting]
    bone, spacing = case.defective.mask, case.defective.spacing
    tissue, box, depth = anatomy(case) if head is None else head
    ct = np.where(tissue, 40.0, -1000.0).astype(np.float32)
    ct[box] = np.where(bone[box], np.where(depth <= CORTEX_MM, 1600.0, diploe), ct[box])
    if metal:
        clip, centre = clip_box(bone, case.implant, spacing)
        ct[clip] = 3000.0
        ct += streaks(bone.shape, centre, spacing, rng)
    image = case.defective.to_sitk(ct, np.float32)
    if blur > 0:
        image = sitk.SmoothingRecursiveGaussian(image, blur)
    values = sitk.GetArrayFromImage(image)
    values += rng.normal(0.0, noise, values.shape).astype(np.float32) if noise else 0.0
    out = sitk.GetImageFromArray(np.clip(np.rint(values), -1024, 3071).astype(np.int16))
    out.CopyInformation(image)
    return out


def score(completer: Completer, case, setting: str, seed: int, head, mask_hu: float | None = None) -> dict:
    """One pair scanned as ``setting``: its implant's DSC and HD95 (mm) against the truth, on the scan's grid
    (``mask_hu``: the scan handed over as its voxels ≥ that many HU, a mask)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ct.nrrd"
        ct = scanner_ct(case, setting, np.random.default_rng(seed), head)
        sitk.WriteImage(ct if mask_hu is None else sitk.Cast(ct >= mask_hu, sitk.sitkUInt8), str(path))
        skull = SkullReading().read(path)
    result = completer.complete(skull)
    implant = result.implant.mask
    return {
        "case": case.case_id, "defect": case.defect, "seed": case.seed, "scan": setting,
        "read_at_hu": skull.metadata.get("hu_threshold"), "bone_dsc": round(float(dice(skull.mask, case.defective.mask)), 4),
        "dsc": round(float(dice(implant, case.implant)), 4),
        "hd95": round(float(hd95(implant, case.implant, case.defective.spacing)), 2),
        "quality": None if result.quality is None else round(result.quality, 3), "source": result.source,
        "warnings": [w[:90] for w in result.warnings],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_arguments(parser, defects="cranial", seeds="0")
    parser.add_argument("--scans", default=",".join(SCANS), help=f"settings, comma-separated: {', '.join(SCANS)}")
    parser.add_argument("--as-mask", action="store_true", help="hand the scan over as a mask: its voxels ≥ --mask-hu")
    parser.add_argument("--mask-hu", type=float, default=300.0, help="--as-mask: the bone threshold (HU)")
    parser.add_argument("--no-join", action="store_true", help="leave a hollow mask's tables apart (warn only)")
    args = parser.parse_args()
    rimfit = CompletionSettings().rimfit
    if args.no_join:
        rimfit = dataclasses.replace(rimfit, config=dataclasses.replace(rimfit.config, join_hollow=False))
    completer = Completer(CompletionSettings(rimfit=rimfit))
    rows = []
    for case in selected_cases(args):
        head = anatomy(case)
        for setting in args.scans.split(","):
            rows.append(score(completer, case, setting, len(rows), head, args.mask_hu if args.as_mask else None))
            print(json.dumps(rows[-1]), flush=True)
    for setting in args.scans.split(","):
        mine = [r for r in rows if r["scan"] == setting]
        dsc, dist = np.array([r["dsc"] for r in mine]), np.array([r["hd95"] for r in mine])
        passing = int(np.sum((dsc >= 0.85) & (dist <= 3.0)))
        print(f"{setting}: {len(mine)} pairs, DSC {dsc.mean():.4f} (min {dsc.min():.4f}), HD95 {dist.mean():.2f} mm "
              f"(max {dist.max():.2f}), pass {passing}")  # fmt: skip


if __name__ == "__main__":
    main()
