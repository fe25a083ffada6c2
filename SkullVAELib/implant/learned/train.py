"""Training the facial refiner: defects drawn afresh every step, validation-based selection.

Every sample: a training skull (on its 1 mm LPS grid, resident on the device), a facial slab
drawn on it (:mod:`.draw`), the crop placed from the *defective* skull's anchors (:mod:`.crop`),
then rotated (±``rotate_deg``), scaled, shifted and mirrored left-right in one ``grid_sample``.
Loss: Dice + binary cross-entropy (MONAI ``DiceCELoss``) on the implant. Every ``val_every``
steps the Dice on fixed validation defects is measured; the best weights are kept. The run
ends after ``steps`` steps or ``seconds`` of wall time, whichever comes first, or on Ctrl-C /
SIGTERM; the best weights are saved every time.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss

from SkullVAELib.core.atomic import atomic_write_text
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.implant.learned.config import RefinerConfig, save_refiner
from SkullVAELib.implant.learned.crop import crop_start, face_anchor, sample_crop
from SkullVAELib.implant.learned.draw import EVALUATION_RANGES, FacialDrawRanges, bone_bounds, facial_region
from SkullVAELib.implant.learned.network import refiner_network


@dataclass
class RefinerTrainConfig:
    """Optimisation and augmentation of the refiner (angles in degrees, shifts in mm)."""

    steps: int = 100_000
    seconds: float = math.inf
    batch: int = 2
    lr: float = 3e-4
    weight_decay: float = 1e-5
    val_every: int = 200
    rotate_deg: float = 10.0
    scale: float = 0.08
    shift_mm: float = 6.0
    mirror: bool = True
    ranges: FacialDrawRanges = field(default_factory=FacialDrawRanges)
    seed: int = 0


@dataclass
class Skull:
    """A complete skull resident on the device: bone bool (X, Y, Z), origin (3,) mm, bone bounds (mm)."""

    bone: torch.Tensor
    origin: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor


def to_device(grids: dict[str, tuple[np.ndarray, np.ndarray]], spacing: float, device: str) -> dict[str, Skull]:
    out = {}
    for case_id, (bone, origin) in grids.items():
        b = torch.from_numpy(bone).to(device)
        o = torch.from_numpy(origin).float().to(device)
        out[case_id] = Skull(b, o, *bone_bounds(b, o, spacing))
    return out


def defect_sample(
    skull: Skull, cfg: RefinerConfig, generator: torch.Generator, ranges: FacialDrawRanges, matrix=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target): float (1, *crop_shape) defective bone and implant for one drawn defect."""
    region = facial_region(tuple(skull.bone.shape), skull.origin, cfg.spacing_mm, skull.lo, skull.hi, generator, ranges)
    defective, implant = skull.bone & ~region, skull.bone & region
    start = crop_start(face_anchor(defective, skull.origin, cfg.spacing_mm), skull.origin, cfg)
    both = sample_crop(torch.stack([defective, implant]).to(torch.uint8), start, cfg, matrix)
    both = (both >= 0.5).float()
    return both[:1], both[1:]


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


class RefinerTrainer:
    """Trains ``refiner_network(cfg)`` on ``train`` skulls, selecting on ``val`` skulls.

    Hooks for subclasses: :meth:`on_validation` (each validation) and :meth:`on_train_end`.
    """

    def __init__(
        self,
        cfg: RefinerConfig,
        train_cfg: RefinerTrainConfig,
        train: dict[str, Skull],
        val: dict[str, Skull],
        device: str = "cpu",
    ) -> None:
        if not train:
            raise SkullVAEError("the refiner needs at least one training skull")
        self.cfg, self.train_cfg, self.device = cfg, train_cfg, device
        self.train_skulls, self.val_skulls = list(train.values()), val
        torch.manual_seed(train_cfg.seed)
        self.network = refiner_network(cfg).to(device)
        self.optimiser = torch.optim.AdamW(
            self.network.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay
        )
        self.loss = DiceCELoss(sigmoid=True)
        self.generator = torch.Generator().manual_seed(train_cfg.seed)
        self.val_inputs = self._validation_inputs()
        self.history: list[dict] = []
        self.best_dice, self.best_step, self.best_state = -1.0, 0, None

    def _validation_inputs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed validation defects (the evaluation generator's ranges), one per validation skull."""
        out = []
        for n, skull in enumerate(self.val_skulls.values()):
            generator = torch.Generator().manual_seed(10_000 + n)
            out.append(defect_sample(skull, self.cfg, generator, EVALUATION_RANGES))
        return out

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.startswith("cuda"))

    def train_step(self) -> float:
        """One optimiser step on a fresh batch; returns the loss."""
        self.network.train()
        inputs, targets = [], []
        for _ in range(self.train_cfg.batch):
            skull = self.train_skulls[int(torch.randint(len(self.train_skulls), (), generator=self.generator))]
            matrix = random_matrix(self.train_cfg, self.cfg.spacing_mm, self.generator).to(self.device)
            x, y = defect_sample(skull, self.cfg, self.generator, self.train_cfg.ranges, matrix)
            inputs.append(x)
            targets.append(y)
        x, y = torch.stack(inputs), torch.stack(targets)
        with self._autocast():
            logits = self.network(x)
        loss = self.loss(logits.float(), y)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        return float(loss.detach())

    @torch.no_grad()
    def validate(self) -> float:
        """Mean Dice (threshold 0.5, outside the patient's bone) over the validation defects."""
        if not self.val_inputs:
            return math.nan
        self.network.eval()
        scores = []
        for x, y in self.val_inputs:
            with self._autocast():
                logits = self.network(x[None])[0].float()
            pred = (logits > 0) & (x < 0.5)
            truth = y > 0.5
            total = pred.sum() + truth.sum()
            scores.append(1.0 if total == 0 else float(2 * (pred & truth).sum() / total))
        return float(np.mean(scores))

    def on_validation(self, step: int, loss: float, dice: float, seconds: float) -> None:
        """Called after each validation (override to log elsewhere)."""
        print(f"step {step:6d}  loss {loss:.4f}  val dice {dice:.4f}  {seconds:.0f} s", flush=True)

    def on_train_end(self) -> None:
        """Called once when training stops (override for extra outputs)."""

    def fit(self) -> None:
        """Train until ``steps`` or ``seconds``; Ctrl-C / SIGTERM stops early (the best is kept)."""
        t0, losses, step = time.perf_counter(), [], 0
        try:
            while step < self.train_cfg.steps and time.perf_counter() - t0 < self.train_cfg.seconds:
                losses.append(self.train_step())
                step += 1
                if step % self.train_cfg.val_every == 0:
                    self._record(step, losses, time.perf_counter() - t0)
                    losses = []
        except KeyboardInterrupt:
            pass
        if losses or not self.history:
            self._record(step, losses, time.perf_counter() - t0)
        self.on_train_end()

    def _record(self, step: int, losses: list[float], seconds: float) -> None:
        dice = self.validate()
        loss = float(np.mean(losses)) if losses else math.nan
        self.history.append({"step": step, "loss": loss, "val_dice": dice, "seconds": round(seconds, 1)})
        # without validation skulls (dice NaN) the latest weights are the ones kept
        if self.best_state is None or not math.isfinite(dice) or dice > self.best_dice:
            self.best_dice, self.best_step = dice, step
            self.best_state = copy.deepcopy(self.network.state_dict())
        self.on_validation(step, loss, dice, seconds)

    def save(self, out: str | Path, train_ids: list[str], val_ids: list[str]) -> Path:
        """Write ``refiner.safetensors`` (best validation weights) and ``history.csv`` to ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        network = refiner_network(self.cfg)
        network.load_state_dict(self.best_state or self.network.state_dict())
        info = {
            "train_ids": train_ids,
            "val_ids": val_ids,
            "best_step": self.best_step,
            "best_val_dice_1mm": self.best_dice,
            "steps": self.history[-1]["step"] if self.history else 0,
            "train": {
                k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in asdict(self.train_cfg).items()
            },
        }
        save_refiner(out / "refiner.safetensors", network, self.cfg, info)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["step", "loss", "val_dice", "seconds"])
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(out / "history.csv", text.getvalue())
        return out / "refiner.safetensors"
