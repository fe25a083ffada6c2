"""The atlas implant: average the best-registered complete skulls, keep what the patient lacks.

1. choose: every atlas is registered affinely on a 4 mm grid; the ``n_atlases`` with the lowest
   metric are kept (:mod:`.register`);
2. register: affine then (optionally) B-spline on the 2 mm grid, metric only near the patient's bone
   (and, within ``missing_margin_mm`` of the missing part, only on the bone itself: one-sided);
3. fuse: each chosen atlas at its original resolution is resampled (linear) onto the patient's
   exact grid and averaged: a bone probability;
4. localise: bone with probability ≥ ``threshold`` that is not the patient's and lies outside the
   patient's outermost bone along the ray from the cranial centre by more than
   ``exposed_margin_mm`` (or where the ray meets no bone at all) is missing surface; its
   connected pieces that reach ≥ ``seed_depth_mm`` from the patient's bone are the implant
   (thin misregistration slivers and differences inside the skull base never qualify);
5. post-process as the rim fit does (closing, thin shells, keep what touches the bone, islands),
   then keep only the pieces of at least ``min_piece_fraction`` × the largest one: bone the
   atlases add far from the defect (skull base, orbits) comes in small pieces;
6. attach to the rim: the exposed-margin rule of step 4 leaves a band of up to
   ``exposed_margin_mm`` between the implant and the patient's cut edges; bone the atlases share
   (≥ ``threshold``) within ``rim_attach_mm`` of the patient's bone and ``rim_attach_reach_mm`` of
   the implant is added back, so the implant meets the rim;
7. drop doubled bone: where the registration left an atlas surface a few mm beside the patient's
   own (orbital roofs, the skull base behind the cut), the band between them passes the rules
   above and runs far back along the patient's bone, joined to the face; implant voxels closer
   than ``doubled_near_mm`` to the patient's bone and farther than ``doubled_core_mm`` from the
   implant's core (its voxels at least ``seed_depth_mm`` from the patient's bone) are dropped.
   The band at the cut edges lies next to the core and stays.

Registering, fusing and locating are each checked against the memory limit before they allocate
(one line naming the stage, :mod:`.memory`); the first two before any registration starts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.limits import check_memory
from SkullVAELib.core.progress import ProgressCallback, no_progress
from SkullVAELib.implant import raycast
from SkullVAELib.implant.atlas.memory import (
    FUSING,
    LOCATING,
    REGISTERING,
    fusion_bytes,
    held_bytes,
    locating_bytes,
    registration_bytes,
)
from SkullVAELib.implant.atlas.register import (
    initial_affine,
    metric_mask,
    register_affine,
    register_deformable,
    without_missing_part,
)
from SkullVAELib.implant.atlas.store import AtlasSet, registration_grid, registration_image
from SkullVAELib.implant.cleanup import bounding_box
from SkullVAELib.implant.components import label_pieces
from SkullVAELib.io.image import SkullImage

SOFT_SHARE = 0.1  # the expected volume counts atlas bone down to this share (below: interpolation fringe)


@dataclass
class AtlasConfig:
    """Settings of the atlas implant (lengths in mm); defaults chosen on validation cases 056–063."""

    n_atlases: int = 5
    metric_mask_mm: float = 2.0  # registration metric only this close to the patient's bone
    deformable: bool = True
    mesh_mm: float = 40.0  # B-spline control-point spacing
    missing_core_mm: float = 4.0  # atlas bone this far from the patient's marks the missing part
    missing_margin_mm: float = 8.0  # the B-spline ignores the patient's bone this close to it ...
    rim_bone_in_metric: bool = True  # ... except the bone voxels themselves (one-sided, by the cut)
    bspline_iterations: int = 30
    threshold: float = 0.4  # fraction of the chosen atlases that must have bone
    exposed_margin_mm: float = 4.0
    seed_depth_mm: float = 6.0
    step_deg: float = 1.0
    min_piece_fraction: float = 0.1  # pieces smaller than this × the largest are dropped
    rim_attach_mm: float = 4.0  # step 6: atlas bone this close to the patient's bone ...
    rim_attach_reach_mm: float = 2.0  # ... and this close to the implant joins it (0: off)
    doubled_near_mm: float = 6.0  # step 7: implant this close to the patient's bone ... (0: off)
    doubled_core_mm: float = 6.0  # ... and farther than this from the implant's core is dropped


@dataclass
class AtlasFill:
    """implant: bool (I, J, K) on the patient's grid, disjoint from its bone; atlases: ids used
    (best first) with the metric their last registration ended at (mean squares, lower is
    better); messages for the user; seconds per step; expected_volume_mm3: the bone the chosen
    atlases add outside the patient's surface on average (for the volume check)."""

    implant: np.ndarray
    atlases: list[str] = field(default_factory=list)
    metrics: list[float] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    expected_volume_mm3: float = float("nan")


def choose_atlases(
    fixed: sitk.Image, mask: sitk.Image, atlases: AtlasSet, n: int, progress: ProgressCallback | None = None
) -> list[tuple[float, str, sitk.AffineTransform]]:
    """(metric, id, affine) of the ``n`` atlases that match ``fixed`` best after a 4 mm affine fit;
    ``progress`` hears of each atlas (fractions 0–0.1 of the "atlas" stage: about 1 s per atlas)."""
    progress = progress or no_progress
    scored = []
    for k, case_id in enumerate(atlases.ids):
        progress("atlas", 0.1 * k / len(atlases), f"choosing among {len(atlases)} atlas skulls: {case_id}")
        moving = atlases.low(case_id)
        transform = initial_affine(fixed, moving)
        try:
            metric = register_affine(fixed, mask, moving, transform, shrink=(2,), iterations=100)
        except RuntimeError:  # e.g. no overlap left: this atlas does not fit at all
            continue
        scored.append((metric, case_id, transform))
    scored.sort(key=lambda s: s[0])
    return scored[:n]


def fuse(
    skull: SkullImage,
    atlases: AtlasSet,
    transforms: list[tuple[str, sitk.Transform]],
    field_grid: sitk.Image | None = None,
    progress: ProgressCallback | None = None,
    held: float = 0.0,
) -> np.ndarray:
    """float32 (I, J, K) fraction of the atlases with bone at each of the patient's voxels.

    ``field_grid``: an image (the 2 mm registration grid) on which a non-affine transform is
    sampled once as a displacement field, so that the original-resolution resampling
    interpolates 8 vectors per voxel instead of evaluating 64 B-spline weights. ``progress``
    hears of each atlas (fractions 0.75–0.95 of the "atlas" stage: seconds per atlas). ``held``:
    bytes the caller holds meanwhile (the registration's images), counted in the memory check.
    """
    sampled = field_grid is not None and not all(isinstance(t, sitk.AffineTransform) for _, t in transforms)
    field_voxels = math.prod(field_grid.GetSize()) if sampled else 0
    estimate = fusion_bytes(skull.mask.size, (atlases.voxels(case_id) for case_id, _ in transforms), field_voxels)
    check_memory(held + estimate, FUSING, skull.metadata.get("source"))
    progress = progress or no_progress
    reference = skull.to_sitk()
    total = np.zeros(skull.shape, dtype=np.float32)
    for k, (case_id, transform) in enumerate(transforms):
        progress("atlas", 0.75 + 0.2 * k / len(transforms), f"fusing atlas skull {case_id} on the patient's grid")
        if field_grid is not None and not isinstance(transform, sitk.AffineTransform):
            field = sitk.TransformToDisplacementField(
                transform,
                sitk.sitkVectorFloat64,
                field_grid.GetSize(),
                field_grid.GetOrigin(),
                field_grid.GetSpacing(),
                field_grid.GetDirection(),
            )
            transform = sitk.DisplacementFieldTransform(field)
        moving = sitk.Cast(atlases.mask(case_id).to_sitk(), sitk.sitkFloat32)
        warped = sitk.Resample(moving, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        total += np.transpose(sitk.GetArrayViewFromImage(warped), (2, 1, 0))
    return total / max(len(transforms), 1)


def exposed(skull: SkullImage, candidate: np.ndarray, margin_mm: float, step_deg: float = 1.0) -> np.ndarray:
    """bool (I, J, K): voxels of ``candidate`` farther out than the patient's outermost bone along
    the ray from the cranial centre by more than ``margin_mm`` (or on a ray that meets no bone)."""
    out = np.zeros(skull.shape, dtype=bool)
    index = np.argwhere(candidate)
    if index.size == 0:
        return out
    centre = raycast.cranial_centre(skull)
    rays = raycast.cast(skull, centre, step_deg)
    row, col, radius = raycast.voxel_cells(skull, index, centre, step_deg)
    outer = rays.r_out[row, col]
    keep = ~np.isfinite(outer) | (radius > outer + margin_mm)
    out[tuple(index[keep].T)] = True
    return out


def localise(skull: SkullImage, probability: np.ndarray, cfg: AtlasConfig) -> np.ndarray:
    """The implant (bool (I, J, K)) from the fused bone probability: see the module docstring."""
    return localise_with_volume(skull, probability, cfg)[0]


def localise_with_volume(
    skull: SkullImage, probability: np.ndarray, cfg: AtlasConfig, held: float = 0.0
) -> tuple[np.ndarray, float]:
    """(implant, expected volume in mm³): :func:`localise`, and the volume the atlases add outside
    the patient's surface on average (the sum of the probability there), which the thresholded,
    cleaned implant should roughly match (0.9–1.1× on validation 056–063). ``held``: bytes the
    caller holds meanwhile, counted in the memory check."""
    candidate = (probability >= min(SOFT_SHARE, cfg.threshold)) & ~skull.mask
    region = exposed(skull, candidate, cfg.exposed_margin_mm, cfg.step_deg)
    missing = region & (probability >= cfg.threshold)
    reach_mm = max(cfg.seed_depth_mm, cfg.rim_attach_mm + cfg.rim_attach_reach_mm, cfg.doubled_near_mm)
    margin = int(np.ceil(reach_mm / skull.spacing.min())) + 2  # the crops of the steps below
    check_memory(held + locating_bytes(missing, margin), LOCATING, skull.metadata.get("source"))
    implant = seeded_implant(skull, missing, cfg)
    implant = attach_to_rim(skull, implant, probability >= cfg.threshold, cfg)
    implant = drop_doubled_bone(skull, implant, cfg)
    return implant, float(probability[region].sum(dtype=np.float64)) * skull.voxel_volume_mm3


def attach_to_rim(skull: SkullImage, implant: np.ndarray, shared: np.ndarray, cfg: AtlasConfig) -> np.ndarray:
    """``implant`` (bool (I, J, K)) plus the voxels of ``shared`` (bone the atlases agree on) that
    are not the patient's, lie within ``rim_attach_mm`` of the patient's bone and within
    ``rim_attach_reach_mm`` of the implant: the part of the band between the implant and the cut
    edges that the implant reaches (one dilation, not a flood)."""
    if cfg.rim_attach_mm <= 0 or cfg.rim_attach_reach_mm <= 0:
        return implant
    pad = np.ceil((cfg.rim_attach_mm + cfg.rim_attach_reach_mm) / skull.spacing).astype(int) + 1
    box = bounding_box(implant, margin=pad)
    if box is None:
        return implant
    near_implant = ndimage.distance_transform_edt(~implant[box], sampling=skull.spacing) <= cfg.rim_attach_reach_mm
    near_bone = ndimage.distance_transform_edt(~skull.mask[box], sampling=skull.spacing) <= cfg.rim_attach_mm
    out = implant.copy()
    out[box] |= shared[box] & ~skull.mask[box] & near_implant & near_bone
    return out


def drop_doubled_bone(skull: SkullImage, implant: np.ndarray, cfg: AtlasConfig) -> np.ndarray:
    """``implant`` (bool (I, J, K)) without the voxels closer than ``doubled_near_mm`` to the
    patient's bone and farther than ``doubled_core_mm`` from the core (implant voxels at least
    ``seed_depth_mm`` from the patient's bone): an atlas surface lying beside the patient's own."""
    if cfg.doubled_near_mm <= 0:
        return implant
    # the crop must hold all bone within doubled_near_mm (the rule) and seed_depth_mm (the core) of
    # the implant for those distances to be exact; the core is implant, inside the crop already
    pad = np.ceil(max(cfg.doubled_near_mm, cfg.seed_depth_mm) / skull.spacing).astype(int) + 1
    box = bounding_box(implant, margin=pad)
    if box is None:
        return implant
    to_bone = ndimage.distance_transform_edt(~skull.mask[box], sampling=skull.spacing)
    core = implant[box] & (to_bone >= cfg.seed_depth_mm)
    if not core.any():  # nothing deep to measure from: a thin implant stays as it is
        return implant
    to_core = ndimage.distance_transform_edt(~core, sampling=skull.spacing)
    out = implant.copy()
    out[box] &= ~((to_bone < cfg.doubled_near_mm) & (to_core > cfg.doubled_core_mm))
    return out


def seeded_implant(skull: SkullImage, missing: np.ndarray, cfg: AtlasConfig) -> np.ndarray:
    """The connected pieces of ``missing`` (bool (I, J, K)) that reach ``seed_depth_mm`` from the
    patient's bone, post-processed like the rim fit's implant, without the minor pieces."""
    from SkullVAELib.implant.postprocess import PostprocessConfig, postprocess_implant

    margin = int(np.ceil(cfg.seed_depth_mm / skull.spacing.min())) + 2
    box = bounding_box(missing, margin=margin)
    if box is None:
        return np.zeros(skull.shape, dtype=bool)
    crop = missing[box]
    depth = ndimage.distance_transform_edt(~skull.mask[box], sampling=skull.spacing)
    labels, _ = label_pieces(crop)
    seeds = np.unique(labels[crop & (depth >= cfg.seed_depth_mm)])
    implant = np.zeros(skull.shape, dtype=bool)
    implant[box] = np.isin(labels, seeds[seeds > 0])
    return postprocess_implant(implant, skull, PostprocessConfig(min_piece_fraction=cfg.min_piece_fraction))


def check_atlas_memory(skull: SkullImage, atlases: AtlasSet, cfg: AtlasConfig) -> None:
    """One-line SkullVAEError naming the stage when registering ``atlases`` to ``skull`` or fusing
    them on its grid would exceed the memory limit (``.memory``): before minutes of registration.
    The fusion is estimated for the set's largest skull (which ones are chosen is not known yet)."""
    source = skull.metadata.get("source")
    estimate = registration_bytes(skull.shape, skull.spacing, atlases, cfg.n_atlases, cfg.deformable)
    check_memory(estimate, REGISTERING, source)
    low = math.prod(registration_grid(skull.shape, skull.spacing, atlases.spacing_mm)[1])
    fusion = fusion_bytes(skull.mask.size, (atlases.voxels(i) for i in atlases.ids), low if cfg.deformable else 0)
    check_memory(held_bytes(low, atlases) + fusion, FUSING, source)


def atlas_implant(
    skull: SkullImage, atlases: AtlasSet, cfg: AtlasConfig | None = None, progress: ProgressCallback | None = None
) -> AtlasFill:
    """The implant for ``skull`` (any geometry; never modified) from the atlas set ``atlases``."""
    cfg = cfg or AtlasConfig()
    progress = progress or no_progress
    if cfg.n_atlases < 1:
        raise SkullVAEError(f"the atlas implant needs at least one atlas, got n_atlases={cfg.n_atlases}")
    if not skull.mask.any():
        raise SkullVAEError("the skull has no bone to register the atlases to")
    check_atlas_memory(skull, atlases, cfg)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        fixed = registration_image(skull.to_sitk(), atlases.spacing_mm)
    except SkullVAEError as exc:
        raise SkullVAEError(exc.message, skull.metadata.get("source")) from None
    mask = metric_mask(fixed, cfg.metric_mask_mm)
    chosen = choose_atlases(fixed, mask, atlases, cfg.n_atlases, progress)
    timings["atlas_choose"] = time.perf_counter() - t0
    if not chosen:
        return AtlasFill(np.zeros(skull.shape, dtype=bool), messages=["no atlas skull could be registered"])
    t0 = time.perf_counter()
    ids, metrics = [case_id for _, case_id, _ in chosen], []
    for n, (_, case_id, affine) in enumerate(chosen):
        progress("atlas", 0.1 + 0.3 * n / len(chosen), f"registering atlas skull {case_id} (affine)")
        metrics.append(register_affine(fixed, mask, atlases.low(case_id), affine, shrink=(1,), iterations=100))
    transforms: list[tuple[str, sitk.Transform]] = [(case_id, affine) for _, case_id, affine in chosen]
    if cfg.deformable:
        placed = [sitk.Resample(atlases.low(i), fixed, t, sitk.sitkLinear, 0.0) for i, t in transforms]
        deform_mask = without_missing_part(
            fixed, mask, placed, cfg.missing_core_mm, cfg.missing_margin_mm, cfg.rim_bone_in_metric
        )
        del placed  # not held through the B-spline registrations (memory.registration_bytes)
        for n, (case_id, affine) in enumerate(list(transforms)):
            progress("atlas", 0.4 + 0.3 * n / len(chosen), f"registering atlas skull {case_id} (B-spline)")
            deformed, metrics[n] = register_deformable(
                fixed, deform_mask, atlases.low(case_id), affine, cfg.mesh_mm, cfg.bspline_iterations
            )
            transforms[n] = (case_id, deformed)
    timings["atlas_register"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    held = held_bytes(math.prod(fixed.GetSize()), atlases)
    probability = fuse(skull, atlases, transforms, field_grid=fixed, progress=progress, held=held)
    timings["atlas_fuse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    implant, expected = localise_with_volume(skull, probability, cfg, held)
    timings["atlas_localise"] = time.perf_counter() - t0
    messages = [] if implant.any() else ["the atlas skulls add no bone outside the patient's surface"]
    progress("atlas", 1.0, "atlas implant done")
    return AtlasFill(implant, ids, metrics, messages, timings, expected)
