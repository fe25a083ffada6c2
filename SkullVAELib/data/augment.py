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
   (transformed) skull, drawn afresh with the same recipes as ``defects`` but on the model grid:
   cranial = bone removed inside a random shape (SkullFix-style box + cylinders or SkullBreak-style
   union of balls) at a random site of the upper vault, 30 mm deep along the outward normal;
   facial = bone removed in a slab from the front (low Y) over the lower part (low Z).

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
    facial_depth_mm: float = 44.0
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

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


def _coords_mm(grid: Sequence[int], spacing_mm: Sequence[float], device) -> list[torch.Tensor]:
    """Voxel-centre coordinates (mm, from the grid centre) along X, Y, Z, broadcastable to (X, Y, Z)."""
    out = []
    for axis, (g, s) in enumerate(zip(grid, spacing_mm, strict=True)):
        c = (torch.arange(g, device=device, dtype=torch.float32) - (g - 1) / 2.0) * float(s)
        shape = [1, 1, 1]
        shape[axis] = g
        out.append(c.view(shape))
    return out


def _bone_bounds(bone: torch.Tensor, coords: Sequence[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Lowest and highest bone coordinate (mm) along X, Y, Z."""
    lo, hi = [], []
    for axis, c in enumerate(coords):
        present = bone.any(dim=tuple(j for j in range(3) if j != axis)).nonzero().flatten()
        vals = c.flatten()[present]
        lo.append(float(vals.min()))
        hi.append(float(vals.max()))
    return lo, hi


def cranial_region(
    bone: torch.Tensor, spacing_mm: Sequence[float], gen: torch.Generator, style: str | None = None
) -> torch.Tensor:
    """A random cranial defect region (X, Y, Z) bool on the upper vault of ``bone`` (X, Y, Z) bool.

    The model-grid twin of ``defects.cranial_defect``: a site on the outer upper vault (random side,
    azimuth ±50°, elevation 25–65° above mid-height), the outward normal there, and in the tangent
    frame either a SkullFix box (44–84 mm) with 2–4 edge cylinders or a SkullBreak smooth union of
    3–6 balls; cut from 30 mm inside to 15 mm outside along the normal. Empty if ``bone`` is empty.
    """
    if not bool(bone.any()):
        return torch.zeros_like(bone)
    x, y, z = _coords_mm(bone.shape, spacing_mm, bone.device)
    idx = bone.nonzero().float()
    sp = torch.tensor(spacing_mm, device=bone.device, dtype=torch.float32)
    centre_idx = torch.tensor([(g - 1) / 2.0 for g in bone.shape], device=bone.device)
    pts = (idx - centre_idx) * sp
    lo, hi = pts.min(0).values, pts.max(0).values
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    side = 1.0 if float(torch.rand((), generator=gen)) < 0.5 else -1.0
    az = math.radians(float(_uniform(gen, (), 50.0)))
    el = math.radians(25.0 + 40.0 * float(torch.rand((), generator=gen)))
    ray = torch.tensor([side * math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    ray = ray.to(bone.device, torch.float32) * half
    ray = ray / ray.norm()
    rel = pts - centre
    dist = rel.norm(dim=1).clamp_min(1e-6)
    near = (rel @ ray) >= math.cos(math.radians(6.0)) * dist
    if not bool(near.any()):
        return torch.zeros_like(bone)
    surface = pts[near][dist[near].argmax()]
    normal = (surface - centre) / (surface - centre).norm()
    helper = torch.tensor([0.0, 0.0, 1.0] if abs(float(normal[2])) < 0.9 else [1.0, 0.0, 0.0], device=bone.device)
    t1 = torch.linalg.cross(normal, helper)
    t1 = t1 / t1.norm()
    t2 = torch.linalg.cross(normal, t1)
    rx, ry, rz = x - surface[0], y - surface[1], z - surface[2]
    a = rx * t1[0] + ry * t1[1] + rz * t1[2]
    b = rx * t2[0] + ry * t2[1] + rz * t2[2]
    d = rx * normal[0] + ry * normal[1] + rz * normal[2]
    if style is None:
        style = "skullfix" if float(torch.rand((), generator=gen)) < 0.5 else "skullbreak"
    if style == "skullfix":
        h1, h2 = (22.0 + 20.0 * torch.rand(2, generator=gen)).tolist()
        inside = (a.abs() <= h1) & (b.abs() <= h2)
        for _ in range(int(torch.randint(2, 5, (), generator=gen))):
            u = torch.rand(4, generator=gen).tolist()
            if u[0] < 0.5:
                ca, cb = (h1 if u[1] < 0.5 else -h1), (2 * u[2] - 1) * h2
            else:
                ca, cb = (2 * u[2] - 1) * h1, (h2 if u[1] < 0.5 else -h2)
            inside = inside | ((a - ca) ** 2 + (b - cb) ** 2 <= (8.0 + 7.0 * u[3]) ** 2)
        return inside & (d >= -30.0) & (d <= 15.0)
    if style != "skullbreak":
        raise SkullVAEError(f"cranial defect style must be skullfix or skullbreak, got {style!r}")
    k, terms = 4.0, []
    for _ in range(int(torch.randint(3, 7, (), generator=gen))):
        u = torch.rand(4, generator=gen).tolist()
        ca, cb, cd, r = 40 * u[0] - 20, 40 * u[1] - 20, -6 + 4 * u[2], 14 + 12 * u[3]
        terms.append(-(torch.sqrt((a - ca) ** 2 + (b - cb) ** 2 + (d - cd) ** 2) - r) / k)
    soft_min = -k * torch.logsumexp(torch.stack(terms), dim=0)
    return (soft_min <= 0.0) & (d >= -30.0) & (d <= 15.0)


def facial_region(
    bone: torch.Tensor, spacing_mm: Sequence[float], gen: torch.Generator, depth_mm: float = 44.0
) -> torch.Tensor:
    """A random facial slab (X, Y, Z) bool: ``depth_mm`` back from the most anterior bone (min Y),
    the lower 45–60 % of the skull's height (Z) and a random 60–100 % of its width (X) near the midline.
    The model-grid twin of ``defects.facial_defect``; empty if ``bone`` is empty."""
    if not bool(bone.any()):
        return torch.zeros_like(bone)
    x, y, z = _coords_mm(bone.shape, spacing_mm, bone.device)
    lo, hi = _bone_bounds(bone, (x, y, z))
    extent = [h - lw for h, lw in zip(hi, lo, strict=True)]
    u = torch.rand(3, generator=gen).tolist()
    height = (0.45 + 0.15 * u[0]) * extent[2]
    width = (0.60 + 0.40 * u[1]) * extent[0]
    cx = (lo[0] + hi[0]) / 2 + (u[2] - 0.5) * (extent[0] - width)
    return (y <= lo[1] + depth_mm) & (z <= lo[2] + height) & ((x - cx).abs() <= 0.5 * width)


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
        if k < cfg.p_cranial:
            region = cranial_region(x[i, 0] > 0.5, spacing, gen)
        elif k < cfg.p_cranial + cfg.p_facial:
            region = facial_region(x[i, 0] > 0.5, spacing, gen, cfg.facial_depth_mm)
        else:
            continue
        inputs[i, 0] = torch.where(region, torch.zeros_like(x[i, 0]), x[i, 0])
    return inputs, (x if cfg.defect_target == "complete" else inputs)
