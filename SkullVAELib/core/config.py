"""Configuration dataclasses and named presets.

Every knob of the method lives here, validated with one-line errors, so that the
trainer, the bundle and the CLI share one definition (pythae style: configs apart from
the model and the trainer).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from SkullVAELib.core.errors import SkullVAEError

# --- vocabulary (one owner: every module, the CLI and the Slicer module import these) ------
#: The defect classes a model completes; a data set's classes are ("complete", *DEFECTS).
DEFECTS: tuple[str, ...] = ("cranial", "facial")
#: The class of a complete (healthy) skull.
COMPLETE = "complete"
#: Every class of a data set, in this order.
CLASSES: tuple[str, ...] = (COMPLETE, *DEFECTS)
#: What a user may ask for: the classifier's choice, or one defect class.
DEFECT_CHOICES: tuple[str, ...] = ("auto", *DEFECTS)
#: How an input volume's values are read (``--input-kind``; ``io.image.read_skull``'s ``kind``): "auto" decides from
#: the values (integers 0..255: a mask; air < -200 to bone > 300: a CT in HU), "binary" (nonzero = bone), "ct"
#: (bone = values >= the bone threshold, e.g. a CBCT whose values are not HU).
INPUT_KINDS: tuple[str, ...] = ("auto", "binary", "ct")
#: A skull given as a closed surface (``io.mesh``): its files, and the voxel (mm) it is read onto by default
#: (SkullFix's scans are 0.4-0.5 mm in plane).
MESH_EXTENSIONS: tuple[str, ...] = (".stl", ".obj", ".ply")
MESH_VOXEL_MM = 0.5
#: Room (mm) about a defective skull's remaining bone where a grid is built or cut around it (a surface
#: voxelized, a body scan's head, a Slicer segmentation without a reference geometry): the cap a defect removes
#: from an adult vault (radius about 90 mm) is 28 mm high for a hole 13 cm across (90 - sqrt(90² - 65²)).
MISSING_CAP_MM = 30.0
# Implant sources (SkullVAELib/implant/sources), one word each: the learned cranial residual on the
# rim fit (only with a trained residual), the geometric rim fit, the learned
# facial U-Net, the registered atlas skulls, the model's latent arithmetic. The default order.
IMPLANT_SOURCES: tuple[str, ...] = ("residual", "rimfit", "learned", "atlas", "model")
#: An implant's quality score (SkullVAELib.implant.quality) under this is a failed implant (empty, stepped at the
#: rim, too thin, stray): the Completer tries the next source and calls one kept anyway doubtful
#: (docs/results/issue-24-2026-12-03.md, "The implant-quality score") ...
QUALITY_FLOOR = 0.3
#: ... and at or above the floor but under this, the implant is kept and the user asked to check it (the CLI's
#: warning, the result's ``implant_review``, the Slicer panel's "check before use").
REVIEW_BELOW = 0.5
# Finishing an implant (smoothing, gap to the bone, minimum thickness): larger values would redesign it.
MAX_FINISH_MM = 20.0
#: Valid γ of z + γ·DEV (inclusive): 0 reconstructs, 1 completes (the paper), up to 2 thickens.
GAMMA_RANGE: tuple[float, float] = (0.0, 2.0)
#: The γ values of a sweep figure (the paper's Figure 5).
GAMMAS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
#: How volumes are resampled to and from the model grid ("area": soft occupancy down,
#: trilinear back; "nearest": the paper's resizing). Recorded in the bundle at training.
RESAMPLE_MODES: tuple[str, ...] = ("area", "nearest")
ATLAS_SPACING_MM = 2.0  # grid of an atlas set's registration images (skullvae build-atlas --spacing)
DEFAULT_RESAMPLE = "area"
#: The implant's colour everywhere (RGB in [0, 1]): the .seg.nrrd files, the Slicer module, the
#: README images. Yellow, as the paper shows implants.
IMPLANT_COLOR: tuple[float, float, float] = (0.95, 0.80, 0.20)
#: ``--device`` values (rule: ``devices.resolve_device``).
DEVICE_HELP = "auto (CUDA if available), cpu, cuda or cuda:N"
PRECISIONS = ("auto", "bf16", "fp32")  # a learned source's training arithmetic (core.devices.training_bf16)
PRECISION_HELP = (
    "training arithmetic: auto (bfloat16 autocast where the device computes it natively: a CUDA GPU, "
    "a CPU with AVX512-BF16 or AMX; else fp32), bf16 or fp32"
)


#: The networks' arithmetic at inference (complete --precision): exact float32, or bfloat16
#: autocast (faster on CPUs with bf16 units and on GPUs; an opt-in, not chosen by the device).
INFERENCE_PRECISIONS = ("float32", "bfloat16")
#: A learned source's learning rate over its run (training.steps.StepTrainer): held, or a cosine
#: from ``lr`` to 0 over the run's budget (its steps or its minutes, whichever ends it first).
LR_SCHEDULES = ("constant", "cosine")
LR_SCHEDULE_HELP = (
    "learning rate over the run: constant, or cosine (from --lr down to 0 over the budget, --steps or "
    "--minutes, whichever ends the run first)"
)
#: The facial refiner's grid positions per axis at inference: n gives n³ passes on the grid moved by
#: k/n of a voxel along each axis, their probabilities averaged (implant.learned.infer).
TEST_TIME_SHIFTS = (1, 2, 3)


def check_option(value: str, options: tuple[str, ...], setting: str, what: str = "") -> str:
    """``value`` when it is one of ``options``; SkullVAEError naming the ``setting`` and ``what``
    ("the refiner's ") otherwise."""
    if value not in options:
        raise SkullVAEError(f"unknown {setting} {value!r}: {what}{setting} must be one of {', '.join(options)}")
    return value


def check_precision(value: str, what: str = "") -> str:
    """``value`` when it is one of :data:`PRECISIONS`; SkullVAEError naming ``what`` ("the refiner's ") otherwise."""
    return check_option(value, PRECISIONS, "precision", what)


def check_inference_precision(value: str) -> str:
    """``value`` when it is one of :data:`INFERENCE_PRECISIONS`; SkullVAEError otherwise."""
    return check_option(value, INFERENCE_PRECISIONS, "precision")


def check_lr_schedule(value: str, what: str = "") -> str:
    """``value`` when it is one of :data:`LR_SCHEDULES`; SkullVAEError naming ``what`` otherwise."""
    return check_option(value, LR_SCHEDULES, "lr_schedule", what)


def check_ema_decay(value: float, what: str = "") -> float:
    """``value`` when it is a decay in [0, 1) (0: no average); SkullVAEError naming ``what`` otherwise."""
    if not 0.0 <= value < 1.0:
        raise SkullVAEError(f"{what}ema must be in [0, 1) (0 turns the average off), not {value}")
    return float(value)


def check_weight_decay(value: float, what: str = "") -> float:
    """``value`` when it is a finite number >= 0; SkullVAEError naming ``what`` otherwise."""
    if not 0.0 <= value < math.inf:
        raise SkullVAEError(f"{what}weight_decay must be a finite number >= 0, not {value}")
    return float(value)


def check_gamma(value: float) -> float:
    """``value`` as a float when it is a valid γ (finite, within GAMMA_RANGE); SkullVAEError otherwise."""
    try:
        gamma = float(value)
    except (TypeError, ValueError):
        gamma = float("nan")
    low, high = GAMMA_RANGE
    if not low <= gamma <= high:  # also rejects NaN
        raise SkullVAEError(f"gamma must be a number in {low:g}..{high:g}, got {value}")
    return gamma


def check_resample(mode: str) -> str:
    """``mode`` when it is one of RESAMPLE_MODES; SkullVAEError otherwise."""
    if mode not in RESAMPLE_MODES:
        raise SkullVAEError(f"resample mode must be one of {', '.join(RESAMPLE_MODES)}, got {mode!r}")
    return mode


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of the VAE (the authors' MONAI VarAutoEncoder, without residual units).

    Attributes:
        grid: model grid (X, Y, Z) in voxels; each must be divisible by 2**len(channels).
        channels: output channels of the encoder's stride-2 conv blocks; the decoder
            mirrors them. Depth = len(channels).
        latent_size: d, the latent dimension.
    """

    grid: tuple[int, int, int] = (256, 256, 128)
    channels: tuple[int, ...] = (32, 64, 64, 128, 128, 256)
    latent_size: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        self.validate()

    @property
    def depth(self) -> int:
        return len(self.channels)

    @property
    def bottleneck_shape(self) -> tuple[int, int, int, int]:
        """(C, X, Y, Z) of the encoder output before flattening."""
        f = 2**self.depth
        return (self.channels[-1], self.grid[0] // f, self.grid[1] // f, self.grid[2] // f)

    def validate(self) -> None:
        if len(self.grid) != 3 or any(g <= 0 for g in self.grid):
            raise SkullVAEError(f"grid must be three positive integers, got {self.grid}")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise SkullVAEError(f"channels must be positive integers, got {self.channels}")
        if self.latent_size <= 0:
            raise SkullVAEError(f"latent_size must be positive, got {self.latent_size}")
        f = 2**self.depth
        bad = [g for g in self.grid if g % f]
        if bad:
            raise SkullVAEError(
                f"grid {'x'.join(map(str, self.grid))} cannot be divided by 2^{self.depth}={f} "
                f"(network depth {self.depth}); use multiples of {f} or fewer channel blocks"
            )

    def to_dict(self) -> dict:
        return {"grid": list(self.grid), "channels": list(self.channels), "latent_size": self.latent_size}

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        return cls(grid=tuple(d["grid"]), channels=tuple(d["channels"]), latent_size=int(d["latent_size"]))


# Named presets. "paper" is the authors' configuration (4.23 M parameters).
PRESETS: dict[str, NetworkConfig] = {
    "paper": NetworkConfig(),
    "paper-128": NetworkConfig(grid=(128, 128, 64), channels=(32, 64, 64, 128, 128, 256)),
    "cpu-small": NetworkConfig(grid=(64, 64, 32), channels=(16, 32, 64, 128, 128)),
    "demo": NetworkConfig(grid=(64, 64, 32), channels=(8, 16, 32, 64, 64), latent_size=16),
    "test": NetworkConfig(grid=(32, 32, 32), channels=(8, 16, 32, 64), latent_size=8),
}


def network_preset(name: str) -> NetworkConfig:
    """Look up a preset by name, with a helpful error."""
    try:
        return PRESETS[name]
    except KeyError:
        raise SkullVAEError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


@dataclass
class TrainConfig:
    """Optimisation settings for one training stage.

    ``dice_weight`` and the KLD sum reproduce the authors' loss scaling, so that β = 100
    and β = 1e-4 mean what they mean in the paper:
    loss = recon_scale · dice_weight · Σ_batch DiceLoss + β · Σ_batch Σ_latent KLD.

    ``recon_scale`` (default 1 = the paper): with the authors' scaling one nat of KL costs
    β = 100 while a sample's whole Dice term is worth at most 80, so β = 100 always collapses
    the posterior. A larger scale (e.g. 1000: one nat then costs as much as 0.125 % of a
    sample's Dice) lets β = 100 keep an informative posterior; choose it on validation
    (docs/results/issue-11.md). Stage 2 (Dice only) ignores it.

    Checkpoints: at the end of every ``checkpoint_every``-th epoch (default 1; 0 = only by
    wall time) and mid-epoch whenever ``checkpoint_minutes`` (default 5) have passed since
    the last one, whichever comes sooner; always at the end and on Ctrl-C / SIGTERM.

    Validation (when the trainer is given validation volumes): reconstruction Dice every
    ``val_every`` epochs; the best weights are kept; ``patience`` > 0 stops the stage after
    that many evaluations without improvement (0 = never stop early).
    """

    stage: int = 1
    beta: float = 100.0
    epochs: int = 200
    batch_size: int = 4
    lr: float = 1e-4
    dice_weight: float = 80.0
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    checkpoint_every: int = 1
    checkpoint_minutes: float = 5.0
    stage2_latent: str = "sample"  # "sample" (paper: z ~ q(z|x) each epoch) | "mu_plus_sigma" (authors' code)
    # bf16 autocast: "auto" where the device computes it natively (CUDA, a CPU with AVX512-BF16 or
    # AMX; core.devices.training_bf16), "bf16" or "fp32" (PRECISIONS, the learned sources' vocabulary)
    precision: str = "auto"
    channels_last: bool = True  # channels-last-3d: faster epochs on CPU (docs/BENCHMARKS.md)
    compile: bool = False
    fused_adam: bool = False  # torch's fused Adam kernel (one launch per step; CUDA and CPU)
    recon_scale: float = 1.0  # multiplies the Dice term of stage 1 (1 = the paper; see above)
    val_every: int = 10  # epochs between validation evaluations (when validation data are given)
    patience: int = 0  # evaluations without improvement before stopping (0 = never stop early)

    def __post_init__(self) -> None:
        if not self.recon_scale > 0 or self.recon_scale == float("inf"):
            raise SkullVAEError(f"recon_scale must be a positive finite number, got {self.recon_scale}")
        if self.checkpoint_every < 0 or not self.checkpoint_minutes > 0:
            raise SkullVAEError("checkpoint_every must be >= 0 and checkpoint_minutes > 0")
        if self.val_every < 1 or self.patience < 0:
            raise SkullVAEError("val_every must be >= 1 and patience >= 0")
        if self.stage not in (1, 2):
            raise SkullVAEError(f"stage must be 1 or 2, got {self.stage}")
        if self.epochs < 0 or self.batch_size <= 0 or self.lr <= 0:
            raise SkullVAEError("epochs must be >= 0, batch size and learning rate > 0")
        if self.beta < 0:
            raise SkullVAEError(f"beta must be >= 0, got {self.beta}")
        if self.stage2_latent not in ("sample", "mu_plus_sigma"):
            raise SkullVAEError(f"stage2_latent must be 'sample' or 'mu_plus_sigma', got {self.stage2_latent!r}")
        check_precision(self.precision)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class CompletionConfig:
    """Settings of `complete()`.

    Attributes:
        gamma: γ of z + γ·DEV (0 reconstructs, 1 completes, >1 thickens).
        defect: "auto" | "cranial" | "facial".
        keep_patient_bone: completed skull = input ∪ implant (True) or raw decoded skull.
        threshold: probability threshold for bone on the original grid.
        min_island_mm3: implant components smaller than this are removed.
        max_distance_mm: implant voxels farther than this from the input bone are removed.
        uncertainty_samples: K samples z ~ q(z|x) + γ·DEV for the uncertainty map (around the fitted z
            when the test-time fit runs; 0 = off).
        fit_steps: Adam steps of the test-time fit of z to the patient's bone before the latent
            shift (``testtime_fit``, mode "refit"; 0 = off, the paper's completion).
    """

    gamma: float = 1.0
    defect: str = "auto"
    keep_patient_bone: bool = True
    threshold: float = 0.5
    min_island_mm3: float = 100.0
    max_distance_mm: float = 10.0
    uncertainty_samples: int = 0
    resample: str | None = None  # RESAMPLE_MODES; None = the mode the model was trained with
    seed: int = 0
    fit_steps: int = 0

    def __post_init__(self) -> None:
        self.gamma = check_gamma(self.gamma)
        if self.resample is not None:
            check_resample(self.resample)
        if self.defect not in DEFECT_CHOICES:
            raise SkullVAEError(f"defect must be {', '.join(DEFECT_CHOICES)}, got {self.defect!r}")
        if not (0.0 < self.threshold < 1.0):
            raise SkullVAEError(f"threshold must lie in (0, 1), got {self.threshold}")
        if self.uncertainty_samples < 0:
            raise SkullVAEError("uncertainty_samples must be >= 0")
        if self.fit_steps < 0:
            raise SkullVAEError(f"fit_steps must be >= 0, got {self.fit_steps}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
