"""Training the facial refiner on the one training loop (:class:`SkullVAELib.training.loop.Trainer`).

Every sample: a training skull (on its LPS grid, resident on the device), a facial slab drawn on
it (:data:`SkullVAELib.data.recipes.FACIAL_WIDE`), the crop placed from the *defective* skull's
anchors (:mod:`.crop`), then rotated (±``rotate_deg``), scaled, shifted and mirrored left-right in
one ``grid_sample``. Loss: Dice + binary cross-entropy (MONAI ``DiceCELoss``) on the implant.

On the loop, an "epoch" is the ``val_every`` steps between two validations (the Dice on fixed
validation defects drawn with :data:`~SkullVAELib.data.recipes.FACIAL`, the evaluation's recipe);
the best weights are kept. The run ends after ``steps`` steps or ``seconds`` of wall time, whichever
comes first; the loop writes ``training_log.csv`` (stage 3 rows) and ``checkpoints/refiner.pt``, and
a resume continues exactly. Ctrl-C / SIGTERM: a checkpoint, then ``KeyboardInterrupt``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss

from SkullVAELib.core.config import check_ema_decay, check_lr_schedule, check_precision, check_weight_decay
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.data.recipes import FACIAL, FACIAL_WIDE, FacialRecipe
from SkullVAELib.data.regions import bone_bounds, facial_region
from SkullVAELib.implant.learned.config import RefinerConfig
from SkullVAELib.implant.learned.crop import crop_start, face_anchor, sample_crop
from SkullVAELib.implant.learned.data import FRACTION_SCALE
from SkullVAELib.training.loop import EpochCallback
from SkullVAELib.training.steps import StepTrainer

REFINER_STAGE = 3  # the refiner's rows in training_log.csv (the VAE's stages are 1 and 2)


@dataclass
class RefinerTrainConfig:
    """Optimisation and augmentation of the refiner (angles in degrees, shifts in mm).

    ``steps`` and ``seconds`` bound the run (a resume may raise them); the other fields must stay
    the same for a resume.
    """

    steps: int = 100_000
    seconds: float = math.inf
    batch: int = 2
    lr: float = 3e-4
    weight_decay: float = 1e-5
    val_every: int = 200  # steps
    rotate_deg: float = 10.0
    scale: float = 0.08
    shift_mm: float = 6.0
    mirror: bool = True
    ranges: FacialRecipe = field(default_factory=lambda: FACIAL_WIDE)
    seed: int = 0
    checkpoint_minutes: float = 5.0
    precision: str = "auto"  # bf16 autocast where the device computes it natively, or "bf16", "fp32"
    lr_schedule: str = "constant"  # or "cosine": lr down to 0 over the budget (core.config.LR_SCHEDULES)
    ema: float = 0.0  # decay of a moving average of the weights, validated and kept (training.averaging); 0: none
    # train on the implant's partial volume (its bone fraction, in [0, 1]) instead of its >= 50 % mask;
    # validation still scores the mask. Needs grids packed with their fractions
    soft_target: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.ranges, dict):  # as stored in a checkpoint or a refiner's info
            self.ranges = FacialRecipe(**{k: tuple(v) for k, v in self.ranges.items()})
        if min(self.steps, self.batch, self.val_every) < 1 or not (self.seconds > 0 and self.lr > 0):
            raise SkullVAEError("the refiner's steps, batch, val_every, seconds and lr must be positive")
        if not self.checkpoint_minutes > 0:
            raise SkullVAEError("the refiner's checkpoint_minutes must be positive")
        check_precision(self.precision, "the refiner's ")
        check_lr_schedule(self.lr_schedule, "the refiner's ")
        check_ema_decay(self.ema, "the refiner's ")
        check_weight_decay(self.weight_decay, "the refiner's ")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Skull:
    """A complete skull resident on the device: bone bool (X, Y, Z), origin (3,) mm, bone bounds (mm),
    and for a ``soft_input`` refiner its anti-aliased bone fraction, uint8 (X, Y, Z) (255 = all bone)."""

    bone: torch.Tensor
    origin: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    fraction: torch.Tensor | None = None


def to_device(
    grids: dict[str, tuple[np.ndarray, np.ndarray]],
    spacing: float,
    device: str,
    fractions: dict[str, np.ndarray] | None = None,
) -> dict[str, Skull]:
    """The packed LPS grids (``data.load_lps_grids``, with ``data.load_lps_fractions``) as :class:`Skull` on ``device``."""
    out = {}
    for case_id, (bone, origin) in grids.items():
        b = torch.from_numpy(bone).to(device)
        o = torch.from_numpy(origin).float().to(device)
        f = None if fractions is None else torch.from_numpy(fractions[case_id]).to(device)
        out[case_id] = Skull(b, o, *bone_bounds(b, o, spacing), fraction=f)
    return out


def defect_sample(
    skull: Skull,
    cfg: RefinerConfig,
    generator: torch.Generator,
    ranges: FacialRecipe,
    matrix=None,
    soft_target: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target): float (1, *crop_shape) defective bone and implant for one drawn defect.

    Both are masks (≥ 50 % after sampling), or in [0, 1] from the skull's bone fraction: the input
    with ``cfg.soft_input`` (the fraction with the defect's region zeroed), the target with
    ``soft_target`` (the fraction inside the region: the implant's partial volume).
    """
    region = facial_region(tuple(skull.bone.shape), skull.origin, cfg.spacing_mm, skull.lo, skull.hi, generator, ranges)
    defective, implant = skull.bone & ~region, skull.bone & region
    start = crop_start(face_anchor(defective, skull.origin, cfg.spacing_mm), skull.origin, cfg)
    if not (cfg.soft_input or soft_target):
        both = sample_crop(torch.stack([defective, implant]).to(torch.uint8), start, cfg, matrix)
        both = (both >= 0.5).float()
        return both[:1], both[1:]
    if skull.fraction is None:
        raise SkullVAEError("a soft input or target needs the skulls' bone fractions (pack with --soft-input)")
    scale = FRACTION_SCALE
    x = torch.where(region, 0, skull.fraction) if cfg.soft_input else defective.to(torch.uint8) * scale
    y = torch.where(region, skull.fraction, 0) if soft_target else implant.to(torch.uint8) * scale
    both = sample_crop(torch.stack([x, y]), start, cfg, matrix) / scale
    x = both[:1].clamp(0, 1) if cfg.soft_input else (both[:1] >= 0.5).float()
    y = both[1:].clamp(0, 1) if soft_target else (both[1:] >= 0.5).float()
    return x, y


def random_matrix(train: RefinerTrainConfig, spacing: float, generator: torch.Generator) -> torch.Tensor:
    """(3, 4): a random rotation · scale (· left-right mirror) and shift in voxels, about the crop centre."""

    def uniform(half: float, n: int = 1) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * half

    angles = torch.deg2rad(uniform(train.rotate_deg, 3))
    c, s = torch.cos(angles), torch.sin(angles)
    rx = torch.tensor([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = torch.tensor([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    rz = torch.tensor([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    linear = (rz @ ry @ rx) * (1 + uniform(train.scale))
    if train.mirror and bool(torch.rand((), generator=generator) < 0.5):
        linear = linear @ torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
    return torch.cat([linear, uniform(train.shift_mm / spacing, 3)[:, None]], dim=1)


def _fingerprint(skulls: list[Skull]) -> torch.Tensor:
    """(n, 4): bone voxels and shape of each skull, for a resume's check that the data are the same."""
    return torch.tensor([[float(s.bone.sum()), *map(float, s.bone.shape)] for s in skulls], dtype=torch.float64)


class RefinerTrainer(StepTrainer):
    """Trains ``cfg.network()`` on ``train`` skulls, selecting on ``val`` skulls, into ``out_dir``."""

    stage = REFINER_STAGE
    checkpoint_name = "refiner"
    resume_keys = ("batch", "lr", "lr_schedule", "ema", "weight_decay", "val_every", "rotate_deg", "scale", "shift_mm")
    resume_keys += ("mirror", "ranges", "seed", "network", "soft_target")

    def __init__(
        self,
        cfg: RefinerConfig,
        train_cfg: RefinerTrainConfig,
        train: dict[str, Skull],
        val: dict[str, Skull],
        out_dir: str | Path,
        device: str = "cpu",
        progress: ProgressCallback | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        if not train:
            raise SkullVAEError("the refiner needs at least one training skull")
        super().__init__(
            cfg.network,
            cfg,
            train_cfg,
            out_dir,
            device,
            fingerprints={"skulls": _fingerprint([*train.values(), *val.values()])},
            has_validation=bool(val),
            progress=progress,
            on_epoch=on_epoch,
        )
        self.refiner_cfg = cfg
        self.train_skulls = list(train.values())
        self.loss = DiceCELoss(sigmoid=True)
        self.val_inputs = [  # fixed validation defects, one per validation skull
            defect_sample(skull, cfg, torch.Generator().manual_seed(10_000 + n), FACIAL)
            for n, skull in enumerate(val.values())
        ]

    def generator_streams(self) -> dict:
        return {"draw": (2, "cpu")}  # skulls, slabs and crop transforms: drawn on the CPU

    def train_step(self, batch: int) -> None:
        """One optimiser step on ``train_cfg.batch`` fresh crops."""
        generator, cfg = self.generators["draw"], self.refiner_cfg
        self.model.train()
        inputs, targets = [], []
        for _ in range(self.train_cfg.batch):
            skull = self.train_skulls[int(torch.randint(len(self.train_skulls), (), generator=generator))]
            matrix = random_matrix(self.train_cfg, cfg.spacing_mm, generator).to(self.ctx.device)
            x, y = defect_sample(skull, cfg, generator, self.train_cfg.ranges, matrix, self.train_cfg.soft_target)
            inputs.append(x)
            targets.append(y)
        with self.autocast():
            logits = self.forward(torch.stack(inputs))
        self.optimise(self.loss(logits.float(), torch.stack(targets)))

    def describe(self, row: dict) -> str:
        val = f", val dice {row['val_dice']:.3f}" if "val_dice" in row else ""
        return f"loss {row['loss']:.3f}{val}"

    @property
    def label(self) -> str:
        return "train refiner"

    @torch.no_grad()
    def validation_dice(self) -> float:
        """Mean Dice (threshold 0.5, outside the patient's bone) over the validation defects."""
        self.model.eval()
        scores = []
        for x, y in self.val_inputs:
            with self.autocast():
                logits = self.model(x[None])[0].float()
            pred, truth = (logits > 0) & (x < 0.5), y > 0.5
            total = pred.sum() + truth.sum()
            scores.append(1.0 if total == 0 else float(2 * (pred & truth).sum() / total))
        self.model.train()
        return float(np.mean(scores))
