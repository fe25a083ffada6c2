"""Training-time augmentation on the model grid, in pure torch (runs where the batch is: GPU or CPU).

Applied to every training batch ``(B, 1, X, Y, Z)`` (soft occupancy in [0, 1]), afresh every step:

1. **left-right mirroring**: flip along X (index i → patient left in SkullFix's orientation,
   see ``phantoms``); an involution.
2. **random rigid + small affine** transform, specified in degrees and millimetres about the
   grid centre (rotation, translation, scale, shear), using the model grid's voxel size
   ``spacing_mm``; **elastic deformation**: a smooth random displacement field (random vectors on
   a coarse control grid every ``elastic_spacing_mm``, cubic-like smoothing by trilinear
   up-sampling). Both are applied in ONE ``grid_sample`` (trilinear, zeros outside), so the
   values stay in [0, 1] and the volume is resampled once.
3. **fresh defects**: with probability ``p_cranial`` / ``p_facial`` a defect is cut from the
   (transformed) skull, drawn afresh on the model grid with the recipes of ``make-defects``
   (:mod:`.recipes`, drawn by :mod:`.regions`): cranial (SkullFix or SkullBreak style, at even odds) or facial.

Targets: ``Augmenter`` returns ``(inputs, targets)``. ``targets`` is the transformed volume
BEFORE the fresh defect was cut, so a freshly cut skull is trained to be completed
(``defect_target="complete"``, the default; the VAE learns completion on those samples). With
``defect_target="input"`` the target is the defective input itself (the paper's training: every
input reconstructs itself). SkullFix's fixed defective cases are data like any other: their target
is themselves (plus any fresh cut filled back).

Randomness: one ``torch.Generator`` on the CPU, seeded per batch from ``cfg.seed`` and one draw of
the trainer's generator (itself seeded per seed, stage, epoch, rank), draws every parameter, so a
run is reproducible and the same on CPU and GPU up to float rounding.

Wiring: ``trainer.train_stage1(..., batch_transform=Augmenter(cfg))``; ``skullvae train --augment``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.data.recipes import CRANIAL_MODEL_GRID, FACIAL, FacialRecipe
from SkullVAELib.data.regions import bone_bounds, cranial_region, facial_region

#: Default model-grid voxel size (mm): SkullFix's ≈ 230 × 230 × 190 mm field of view on 64×64×32.
SKULLFIX_FOV_MM = (230.0, 230.0, 190.0)
DEFECT_TARGETS = ("complete", "input")


@dataclass
class AugmentConfig:
    """Augmentation settings (probabilities per sample, ranges symmetric about 0).

    Attributes:
        spacing_mm: model-grid voxel size (X, Y, Z) in mm; None → SKULLFIX_FOV_MM / grid.
        p_mirror: probability of a left-right flip (along X).
        p_affine: probability of a random rigid/affine transform.
        rotation_deg: maximum rotation about each axis.
        translation_mm: maximum shift along each axis.
        scale: maximum relative scaling per axis (0.05 = ±5 %).
        shear: maximum shear (off-diagonal) coefficient.
        p_elastic: probability of an elastic deformation.
        elastic_mm: standard deviation of the control-point displacements (mm).
        elastic_spacing_mm: distance between control points (mm): the smoothness of the field.
        p_cranial, p_facial: probabilities of a fresh cranial / facial defect (exclusive draws).
        facial_depth_mm: slab depth from the most anterior bone (the ``defects`` default 44 mm).
        defect_target: "complete" (target = the skull before the fresh cut) or "input".
        seed: base seed; step ``(epoch, step)`` uses SeedSequence([seed, epoch, step]).
    """

    spacing_mm: tuple[float, float, float] | None = None
    p_mirror: float = 0.5
    p_affine: float = 0.8
    rotation_deg: float = 8.0
    translation_mm: float = 8.0
    scale: float = 0.05
    shear: float = 0.02
    p_elastic: float = 0.5
    elastic_mm: float = 2.0
    elastic_spacing_mm: float = 40.0
    p_cranial: float = 0.3
    p_facial: float = 0.1
    facial_depth_mm: float = FACIAL.depth_mm[0]
    defect_target: str = "complete"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("p_mirror", "p_affine", "p_elastic", "p_cranial", "p_facial"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise SkullVAEError(f"augment {name} must lie in [0, 1], got {v}")
        if self.p_cranial + self.p_facial > 1.0:
            raise SkullVAEError("augment p_cranial + p_facial must not exceed 1")
        for name in ("rotation_deg", "translation_mm", "scale", "shear", "elastic_mm", "facial_depth_mm"):
            if getattr(self, name) < 0 or not math.isfinite(getattr(self, name)):
                raise SkullVAEError(f"augment {name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.scale >= 0.5:
            raise SkullVAEError(f"augment scale must be < 0.5, got {self.scale}")
        if self.elastic_spacing_mm <= 0:
            raise SkullVAEError(f"augment elastic_spacing_mm must be > 0, got {self.elastic_spacing_mm}")
        if self.defect_target not in DEFECT_TARGETS:
            raise SkullVAEError(f"augment defect_target must be one of {DEFECT_TARGETS}, got {self.defect_target!r}")
        if self.spacing_mm is not None:
            sp = tuple(float(s) for s in self.spacing_mm)
            if len(sp) != 3 or min(sp) <= 0:
                raise SkullVAEError(f"augment spacing_mm must be three positive numbers, got {self.spacing_mm}")
            self.spacing_mm = sp  # type: ignore[assignment]
        self.facial_recipe()  # a slab depth of 0 is refused here, not in the middle of a training

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def facial_recipe(self) -> FacialRecipe:
        """:data:`.recipes.FACIAL` with this slab depth."""
        return dataclasses.replace(FACIAL, depth_mm=(self.facial_depth_mm, self.facial_depth_mm))

    def resolved_spacing(self, grid: Sequence[int]) -> tuple[float, float, float]:
        """``spacing_mm`` or SkullFix's field of view divided by ``grid`` (X, Y, Z)."""
        if self.spacing_mm is not None:
            return self.spacing_mm
        return tuple(f / g for f, g in zip(SKULLFIX_FOV_MM, grid, strict=True))  # type: ignore[return-value]


def step_generator(seed: int, epoch: int | None, step: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, step): independent, reproducible streams.

    ``epoch=None`` is a separate stream (an ``Augmenter`` called without epoch/step counts its calls).
    """
    key = [int(seed), 0, int(epoch), int(step)] if epoch is not None else [int(seed), 1, 0, int(step)]
    state = np.random.SeedSequence(key).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> 1))


def _uniform(gen: torch.Generator, shape, bound: float) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2.0 - 1.0) * bound


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) radians about X, Y, Z → (B, 3, 3) rotation matrices R = Rz·Ry·Rx."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1).view(-1, 3, 3)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1).view(-1, 3, 3)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1).view(-1, 3, 3)
    return rz @ ry @ rx


def affine_theta(
    matrix_mm: torch.Tensor, shift_mm: torch.Tensor, grid: Sequence[int], spacing_mm: Sequence[float]
) -> torch.Tensor:
    """``affine_grid`` θ (B, 3, 4) for the map p_in = M·p_out + t (mm about the grid centre, (X, Y, Z) order).

    ``affine_grid`` works in normalised coordinates ordered (Z, Y, X) for a (B, C, X, Y, Z) tensor
    (its last dimension first); u = p / half-extent with ``align_corners=False``.
    """
    half = torch.tensor([g * s / 2.0 for g, s in zip(grid, spacing_mm, strict=True)], dtype=torch.float64)
    a = matrix_mm * half.view(1, 1, 3) / half.view(1, 3, 1)  # D⁻¹ M D
    b = shift_mm / half.view(1, 3)
    rev = [2, 1, 0]
    return torch.cat([a[:, rev][:, :, rev], b[:, rev].unsqueeze(-1)], dim=2)


def random_affine(n: int, cfg: AugmentConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(M (n, 3, 3), t (n, 3) mm): rotation · (scale + shear), drawn uniformly within the config's ranges."""
    rot = _rotation(torch.deg2rad(_uniform(gen, (n, 3), cfg.rotation_deg)))
    shape = torch.diag_embed(1.0 + _uniform(gen, (n, 3), cfg.scale))
    off = _uniform(gen, (n, 3, 3), cfg.shear) * (1.0 - torch.eye(3, dtype=torch.float64))
    return rot @ (shape + off), _uniform(gen, (n, 3), cfg.translation_mm)


def elastic_control_points(
    n: int, grid: Sequence[int], spacing_mm: Sequence[float], cfg: AugmentConfig, gen: torch.Generator
) -> torch.Tensor:
    """float64 (n, 3, cx, cy, cz) mm: random displacements on a control grid every ``elastic_spacing_mm``,
    drawn on the CPU generator (same seeds, same draws on any device)."""
    ctrl = [max(2, round(g * s / cfg.elastic_spacing_mm) + 1) for g, s in zip(grid, spacing_mm, strict=True)]
    return torch.randn((n, 3, *ctrl), generator=gen, dtype=torch.float64) * cfg.elastic_mm


def elastic_field(
    control: torch.Tensor,
    grid: Sequence[int],
    spacing_mm: Sequence[float],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Displacements (n, X, Y, Z, 3) in ``grid_sample``'s normalised (Z, Y, X) units, interpolated on
    ``device`` from ``control`` (:func:`elastic_control_points`): only the control points travel;
    the full field (n × 3 × X × Y × Z floats, 50 MB for 4 volumes at 128×128×64) is built where it is used."""
    field = F.interpolate(control.float().to(device), size=tuple(grid), mode="trilinear", align_corners=True)
    half = torch.tensor([g * s / 2.0 for g, s in zip(grid, spacing_mm, strict=True)], device=field.device)
    field = field / half.view(1, 3, 1, 1, 1)  # mm → normalised, channels in (X, Y, Z) order
    return field.flip(1).permute(0, 2, 3, 4, 1)  # (n, X, Y, Z, 3) in (Z, Y, X) order


def warp(volume: torch.Tensor, theta: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Resample (B, 1, X, Y, Z) through θ (B, 3, 4) plus optional offsets (B, X, Y, Z, 3); trilinear, zeros outside."""
    x = volume.float()
    grid = F.affine_grid(theta.to(x.device, torch.float32), list(x.shape), align_corners=False)
    if offsets is not None:
        grid = grid + offsets.to(x.device)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0.0, 1.0)


def mirror(volume: torch.Tensor) -> torch.Tensor:
    """Left-right flip of (B, 1, X, Y, Z) along X (SkullFix's left-right axis); an involution."""
    return torch.flip(volume, dims=(2,))


def fresh_defect(bone: torch.Tensor, kind: str, spacing_mm: Sequence[float], cfg: AugmentConfig, gen: torch.Generator):
    """bool (X, Y, Z): a ``kind`` ("cranial" or "facial") defect region drawn on the model-grid skull ``bone``
    (bool (X, Y, Z), coordinates from the grid centre) with :mod:`.recipes`' recipe; empty without bone."""
    origin = [-(g - 1) / 2.0 * s for g, s in zip(bone.shape, spacing_mm, strict=True)]
    if kind == "cranial":
        return cranial_region(bone, origin, spacing_mm, gen, recipe=CRANIAL_MODEL_GRID)
    if not bool(bone.any()):
        return torch.zeros_like(bone)
    lo, hi = bone_bounds(bone, origin, spacing_mm)
    return facial_region(bone.shape, origin, spacing_mm, lo, hi, gen, cfg.facial_recipe())


class Augmenter:
    """Batch transform ``(B, 1, X, Y, Z) → (inputs, targets)`` for the trainer's ``batch_transform`` hook.

    ``augmenter(x, generator)``: the trainer's generator (seeded per seed, stage, epoch, rank, on the
    training device) gives one 63-bit draw that, with ``cfg.seed``, seeds the CPU generator of this
    batch; without a generator the calls are counted (``step_generator(cfg.seed, None, call)``).
    Either way the same seeds always give the same batches.
    """

    def __init__(self, cfg: AugmentConfig | None = None) -> None:
        self.cfg = cfg or AugmentConfig()
        self.calls = 0

    def __call__(
        self, batch: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.ndim != 5 or batch.shape[1] != 1:
            raise SkullVAEError(f"augment needs a (B, 1, X, Y, Z) batch, got shape {tuple(batch.shape)}")
        if generator is None:
            gen = step_generator(self.cfg.seed, None, self.calls)
        else:
            draw = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            gen = step_generator(self.cfg.seed, draw, 0)
        self.calls += 1
        return augment_batch(batch, self.cfg, gen)


def augment_batch(batch: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), both (B, 1, X, Y, Z) float32 in [0, 1] on ``batch``'s device (see module docstring)."""
    n, grid = batch.shape[0], tuple(batch.shape[2:])
    spacing = cfg.resolved_spacing(grid)
    x = batch.float()
    flip = torch.rand(n, generator=gen) < cfg.p_mirror
    if bool(flip.any()):
        x = torch.where(flip.view(-1, 1, 1, 1, 1).to(x.device), mirror(x), x)
    use_aff = torch.rand(n, generator=gen) < cfg.p_affine
    use_el = torch.rand(n, generator=gen) < cfg.p_elastic
    matrix, shift = random_affine(n, cfg, gen)
    eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
    matrix = torch.where(use_aff.view(-1, 1, 1), matrix, eye)
    shift = torch.where(use_aff.view(-1, 1), shift, torch.zeros_like(shift))
    control = elastic_control_points(n, grid, spacing, cfg, gen)  # always drawn: a fixed RNG stream
    offsets = None
    if bool(use_el.any()):  # the field itself only when a volume uses it
        offsets = elastic_field(control, grid, spacing, x.device) * use_el.view(-1, 1, 1, 1, 1).to(x.device)
    if bool(use_aff.any() or use_el.any()):
        moved = warp(x, affine_theta(matrix, shift, grid, spacing), offsets)
        x = torch.where((use_aff | use_el).view(-1, 1, 1, 1, 1).to(x.device), moved, x)
    kind = torch.rand(n, generator=gen)
    inputs = x.clone()
    for i in range(n):
        k = float(kind[i])
        if k < cfg.p_cranial + cfg.p_facial:
            region = fresh_defect(x[i, 0] > 0.5, "cranial" if k < cfg.p_cranial else "facial", spacing, cfg, gen)
        else:
            continue
        inputs[i, 0] = torch.where(region, torch.zeros_like(x[i, 0]), x[i, 0])
    return inputs, (x if cfg.defect_target == "complete" else inputs)
