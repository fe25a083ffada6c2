"""Training the cranial residual on the one training loop (:class:`SkullVAELib.training.loop.Trainer`).

Every step: ``batch`` samples of the pool (:mod:`.pool`), each cut at a random offset within its
``PAD`` margin (a shift of up to ±``PAD`` voxels), mirrored left-right with probability 0.5 and,
with ``augment``, warped by a random affine and elastic field (:mod:`.augment`).
The prediction is ``sigmoid(sharpness · (sdf + shift))``; the loss is soft Dice + binary
cross-entropy against the true implant's fraction, over the voxels that are neither bone nor
ignored (an existing hole of an ``extra`` skull). The network starts at shift 0 (the rim fit).

Validation: the Dice on the 2 mm crops of the validation pool of ``sdf + shift > 0`` against the
true implant (> 0.5), next to the same Dice of the rim fit itself (``val_rimfit``); the best
weights are kept. This is a proxy: the measure that decides is the implant at the original
resolution (``skullvae evaluate --implants residual``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from SkullVAELib.core.config import check_ema_decay, check_lr_schedule, check_precision, check_weight_decay
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback
from SkullVAELib.implant.residual.augment import crop_augment_config, warp_crops
from SkullVAELib.implant.residual.config import ResidualConfig
from SkullVAELib.implant.residual.pool import PAD
from SkullVAELib.training.loop import EpochCallback
from SkullVAELib.training.steps import StepTrainer

RESIDUAL_STAGE = 4  # the residual's rows in training_log.csv (VAE 1, 2; facial refiner 3)


@dataclass
class ResidualTrainConfig:
    """Optimisation and augmentation of the residual; ``steps`` and ``seconds`` bound the run."""

    steps: int = 100_000
    seconds: float = math.inf
    batch: int = 2
    lr: float = 3e-4
    weight_decay: float = 1e-5
    val_every: int = 100  # steps
    mirror: bool = True
    augment: bool = False  # a random affine (rotation, scale, shear) and elastic warp of every crop
    seed: int = 0
    checkpoint_minutes: float = 5.0
    precision: str = "auto"  # bf16 autocast where the device computes it natively, or "bf16", "fp32"
    lr_schedule: str = "constant"  # or "cosine": lr down to 0 over the budget (core.config.LR_SCHEDULES)
    ema: float = 0.0  # decay of a moving average of the weights, validated and kept (training.averaging); 0: none

    def __post_init__(self) -> None:
        if min(self.steps, self.batch, self.val_every) < 1 or not (self.seconds > 0 and self.lr > 0):
            raise SkullVAEError("the residual's steps, batch, val_every, seconds and lr must be positive")
        check_precision(self.precision, "the residual's ")
        check_lr_schedule(self.lr_schedule, "the residual's ")
        check_ema_decay(self.ema, "the residual's ")
        check_weight_decay(self.weight_decay, "the residual's ")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def crop_batch(pool: dict, rows: list[int], offsets: list[tuple[int, int, int]], flips: list[bool], cfg):
    """(inputs (B, 3, *crop), target (B, 1, *crop), weight (B, 1, *crop)) float32 tensors."""
    xs, ys, ws = [], [], []
    for row, (a, b, c), flip in zip(rows, offsets, flips, strict=True):
        window = (slice(a, a + cfg.crop_shape[0]), slice(b, b + cfg.crop_shape[1]), slice(c, c + cfg.crop_shape[2]))
        x = pool["inputs"][row][(slice(None), *window)].astype(np.float32)
        y = pool["target"][row][window].astype(np.float32) / 255.0
        w = (~pool["ignore"][row][window] & (x[0] < 0.5)).astype(np.float32)
        if flip:
            x, y, w = x[:, ::-1], y[::-1], w[::-1]
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(y)[None])
        ws.append(np.ascontiguousarray(w)[None])
    return tuple(torch.from_numpy(np.stack(a)) for a in (xs, ys, ws))


def residual_loss(output, inputs, target, weight, cfg: ResidualConfig) -> torch.Tensor:
    """Soft Dice + weighted BCE of ``sigmoid(sharpness · (sdf + shift))`` against ``target``."""
    logits = cfg.sharpness_per_mm * (inputs[:, 1:2] * cfg.sdf_clip_mm + cfg.shift_mm(output))
    p = torch.sigmoid(logits) * weight
    t = target * weight
    dice = 1 - (2 * (p * t).sum((1, 2, 3, 4)) + 1) / (p.sum((1, 2, 3, 4)) + t.sum((1, 2, 3, 4)) + 1)
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum") / weight.sum().clamp(min=1)
    return dice.mean() + bce


def crop_dice(shift: torch.Tensor | None, inputs, target, weight, cfg: ResidualConfig) -> tuple[float, float, float]:
    """(intersection, predicted, true) voxel counts of ``sdf + shift > 0`` vs ``target > 0.5``."""
    sdf = inputs[:, 1:2] * cfg.sdf_clip_mm
    pred = ((sdf + (0 if shift is None else shift)) > 0) & (weight > 0)
    truth = (target > 0.5) & (weight > 0)
    return float((pred & truth).sum()), float(pred.sum()), float(truth.sum())


class ResidualTrainer(StepTrainer):
    """Trains ``cfg.network()`` on the ``train`` pool, selecting on the ``val`` pool, into ``out_dir``."""

    stage = RESIDUAL_STAGE
    checkpoint_name = "residual"
    resume_keys = ("batch", "lr", "lr_schedule", "ema", "weight_decay", "val_every", "mirror", "augment", "seed")
    resume_keys += ("network",)

    def __init__(
        self,
        cfg: ResidualConfig,
        train_cfg: ResidualTrainConfig,
        train: dict,
        val: dict | None,
        out_dir,
        device: str = "cpu",
        progress: ProgressCallback | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> None:
        if len(train["inputs"]) == 0:
            raise SkullVAEError("the residual needs at least one training sample")
        fingerprint = torch.tensor([[len(p["inputs"]), float(p["target"].sum())] for p in (train, val) if p])
        super().__init__(
            cfg.network, cfg, train_cfg, out_dir, device, fingerprints={"pools": fingerprint.double()},
            has_validation=val is not None and len(val["inputs"]) > 0, progress=progress, on_epoch=on_epoch,
        )  # fmt: skip
        self.residual_cfg, self.pool, self.val_pool = cfg, train, val
        self.warp_cfg = crop_augment_config(cfg.spacing_mm)  # the warps' ranges (train_cfg.augment)
        self.val_rimfit = self._val_score(None) if self.has_validation else math.nan

    def generator_streams(self) -> dict:
        return {"draw": (3, "cpu")}

    def train_step(self, batch: int) -> None:
        """One optimiser step on ``train_cfg.batch`` shifted, maybe mirrored crops."""
        g, n = self.generators["draw"], self.train_cfg.batch
        rows = torch.randint(len(self.pool["inputs"]), (n,), generator=g).tolist()
        offsets = [tuple(torch.randint(2 * PAD + 1, (3,), generator=g).tolist()) for _ in range(n)]
        flips = [self.train_cfg.mirror and bool(torch.rand((), generator=g) < 0.5) for _ in range(n)]
        x, y, w = (t.to(self.ctx.device) for t in crop_batch(self.pool, rows, offsets, flips, self.residual_cfg))
        if self.train_cfg.augment:
            x, y, w = warp_crops(x, y, w, self.warp_cfg, g)
        self.model.train()
        with self.autocast():
            output = self.forward(x)
        self.optimise(residual_loss(output.float(), x, y, w, self.residual_cfg))

    def on_validation(self, row: dict) -> None:
        row["val_rimfit"] = self.val_rimfit

    def describe(self, row: dict) -> str:
        val = f", val dice {row['val_dice']:.4f} (rim fit {self.val_rimfit:.4f})" if "val_dice" in row else ""
        return f"loss {row['loss']:.3f}{val}"

    @property
    def label(self) -> str:
        return "train residual"

    @torch.no_grad()
    def _val_score(self, model) -> float:
        """Mean per-sample Dice on the validation crops (centred, not mirrored); ``model`` None: the rim fit."""
        scores = []
        for row in range(len(self.val_pool["inputs"])):
            x, y, w = (
                t.to(self.ctx.device)
                for t in crop_batch(self.val_pool, [row], [(PAD,) * 3], [False], self.residual_cfg)
            )
            shift = None if model is None else self.residual_cfg.shift_mm(model(x).float())
            both, pred, truth = crop_dice(shift, x, y, w, self.residual_cfg)
            scores.append(1.0 if pred + truth == 0 else 2 * both / (pred + truth))
        return float(np.mean(scores))

    def validation_dice(self) -> float:
        self.model.eval()
        try:
            return self._val_score(self.model)
        finally:
            self.model.train()

    def summary(self) -> dict:
        return {**super().summary(), "val_rimfit_dice": self.val_rimfit}
