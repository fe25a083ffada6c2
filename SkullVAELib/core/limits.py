"""Resource limits: refuse inputs that would exhaust memory, checked before anything is allocated.

Sizes come from file headers (SimpleITK's ``ReadImageInformation`` reads no voxels) and from
model configs, so a 200-byte file that declares 2000³ voxels fails with one line instead of
allocating gigabytes.

Defaults (documented in the README, "Reliability"):

- ``max_voxels`` = 1024³ voxels per volume;
- ``max_memory_gb`` = 4 GB of estimated memory per volume read and completed, per model
  (parameters + one forward pass) and per model-grid volume of a training cache. The cache as a
  whole (N float16 volumes) is not held to it: training needs all of it, and SkullFix's 240 cases
  at 256×256×128 take 4.03 GB, just over the default (``data.dataset.build_cache``).

Small files (JSON of models, registries, caches) are read through :func:`read_regular_bytes`:
regular files only, opened without blocking (a FIFO named ``completion.json`` would otherwise
hang the reader forever), and at most a stated number of bytes.

Override with the environment (``SKULLVAE_MAX_VOXELS``, ``SKULLVAE_MAX_MEMORY_GB``; the Slicer
child process inherits them) or the CLI flags ``--max-voxels`` / ``--max-memory-gb``
(:func:`set_limits`).
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from os import PathLike

from SkullVAELib.core.errors import SkullVAEError

DEFAULT_MAX_VOXELS = 1024**3
DEFAULT_MAX_MEMORY_GB = 4.0
ENV_MAX_VOXELS = "SKULLVAE_MAX_VOXELS"
ENV_MAX_MEMORY_GB = "SKULLVAE_MAX_MEMORY_GB"
# Peak bytes per input voxel of reading and completing a volume beyond the file's own pixel
# buffer: bool masks, CT connected-component labels (uint32), the float32 probability map
# back on the input grid and the implant masks. Measured ≈ 15 B/voxel for a 512×512×256
# SkullFix case (1 GB peak, docs/BENCHMARKS.md); 16 keeps a margin.
WORK_BYTES_PER_VOXEL = 16
FLOAT_BYTES = 4
GB = 1e9
_override: dict[str, float] = {}


@dataclass(frozen=True)
class Limits:
    """The limits in force: voxels per volume and estimated bytes per operation."""

    max_voxels: int
    max_memory_bytes: float

    @property
    def max_memory_gb(self) -> float:
        return self.max_memory_bytes / GB


def _env_number(name: str) -> float | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise SkullVAEError(f"environment variable {name} must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise SkullVAEError(f"environment variable {name} must be a positive number, got {text!r}")
    return value


def set_limits(max_voxels: float | None = None, max_memory_gb: float | None = None) -> None:
    """Override the limits for this process (CLI flags); None keeps the environment/default value.

    Also exported to the environment so that child processes (spawned cache workers) see them.
    """
    for key, value, env in (
        ("max_voxels", max_voxels, ENV_MAX_VOXELS),
        ("max_memory_gb", max_memory_gb, ENV_MAX_MEMORY_GB),
    ):
        if value is None:
            continue
        value = float(value)
        if not (math.isfinite(value) and value > 0):
            raise SkullVAEError(f"--{key.replace('_', '-')} must be a positive number, got {value:g}")
        _override[key] = value
        os.environ[env] = repr(value)


def reset_limits() -> None:
    """Forget :func:`set_limits` overrides (tests)."""
    _override.clear()


def current_limits() -> Limits:
    """The limits in force: :func:`set_limits` > environment > defaults."""
    voxels = _override.get("max_voxels") or _env_number(ENV_MAX_VOXELS) or DEFAULT_MAX_VOXELS
    memory = _override.get("max_memory_gb") or _env_number(ENV_MAX_MEMORY_GB) or DEFAULT_MAX_MEMORY_GB
    return Limits(int(voxels), float(memory) * GB)


def _hint() -> str:
    return f"raise the limit with --max-voxels / --max-memory-gb (or ${ENV_MAX_VOXELS} / ${ENV_MAX_MEMORY_GB})"


def check_memory(estimated_bytes: float, what: str, path: str | PathLike | None = None) -> None:
    """Raise SkullVAEError when ``estimated_bytes`` exceeds the memory limit."""
    limits = current_limits()
    if not math.isfinite(estimated_bytes) or estimated_bytes > limits.max_memory_bytes:
        need = (
            "an unbounded amount of" if not math.isfinite(estimated_bytes) else f"about {estimated_bytes / GB:.1f} GB"
        )
        raise SkullVAEError(
            f"{what} would need {need} memory, over the {limits.max_memory_gb:g} GB limit; {_hint()}", path
        )


def check_volume(
    size: tuple[int, ...] | list[int], bytes_per_voxel: float, path: str | PathLike | None = None, what: str = "volume"
) -> None:
    """Check a volume's declared size (from its header) before reading its voxels.

    Args:
        size: voxel counts per axis (any order).
        bytes_per_voxel: bytes of one voxel in the file's pixel type (all components).
        path: the file, named in the error.
        what: what is being read, for the message.
    """
    n = math.prod(int(s) for s in size)
    limits = current_limits()
    shape = "x".join(str(int(s)) for s in size)
    if n > limits.max_voxels:
        raise SkullVAEError(
            f"{what} of {shape} = {n:,} voxels exceeds the limit of {limits.max_voxels:,} voxels; {_hint()}", path
        )
    check_memory(n * (bytes_per_voxel + WORK_BYTES_PER_VOXEL), f"a {shape} {what}", path)


def network_memory_bytes(
    grid: tuple[int, ...], channels: tuple[int, ...], latent_size: int, decoders: int = 2
) -> float:
    """Estimated bytes of a model: float32 parameters of the encoder and ``decoders`` decoders,
    plus the activations of one forward pass (batch 1) through encoder and decoder.

    The linear layers between the bottleneck (C·X·Y·Z / 8^depth values) and the latent space
    dominate for large grids or latent sizes; 3×3×3 convolutions are counted exactly.
    """
    voxels = math.prod(grid)
    depth = len(channels)
    bottleneck = channels[-1] * voxels / 8**depth
    conv = 0.0
    previous = 1
    for c in channels:
        conv += 27 * previous * c + 3 * c  # weights, bias, BatchNorm/PReLU
        previous = c
    encoder = conv + 2 * (bottleneck * latent_size + latent_size)
    decoder = conv + bottleneck * latent_size + bottleneck
    parameters = encoder + decoders * decoder
    activations = voxels  # the input
    level = voxels
    for c in channels:
        level /= 8
        activations += 2 * c * level  # encoder and mirrored decoder feature maps
    activations += voxels  # the decoded probabilities
    return FLOAT_BYTES * (parameters + 2 * activations)


def check_network(
    grid: tuple[int, ...], channels: tuple[int, ...], latent_size: int, path: str | PathLike | None = None
) -> None:
    """Raise SkullVAEError when a model of this shape would exceed the memory or voxel limit."""
    check_volume_grid = math.prod(int(g) for g in grid)
    limits = current_limits()
    if check_volume_grid > limits.max_voxels:
        raise SkullVAEError(
            f"model grid {'x'.join(map(str, grid))} = {check_volume_grid:,} voxels exceeds the limit of "
            f"{limits.max_voxels:,} voxels; {_hint()}",
            path,
        )
    estimate = network_memory_bytes(tuple(grid), tuple(channels), int(latent_size))
    check_memory(
        estimate,
        f"a model with grid {'x'.join(map(str, grid))}, channels {list(channels)} and latent size {latent_size}",
        path,
    )


def nonblocking_opener(path: str, flags: int) -> int:
    """``open(path, mode, opener=nonblocking_opener)``: open without waiting for a FIFO's writer (the
    caller then refuses what is not a regular file); no effect on regular files."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def read_regular_bytes(path: str | PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of ``path`` (symlinks followed): a regular file of at most ``max_bytes``.

    A FIFO, device, socket or folder is refused without blocking; one-line SkullVAEError naming
    the file for those, a missing or unreadable file, or one over ``max_bytes``.
    """
    try:
        stream = open(path, "rb", opener=nonblocking_opener)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise SkullVAEError(f"{what} not found", path) from None
    except OSError as exc:
        raise SkullVAEError(f"cannot read {what}: {exc.strerror or exc}", path) from None
    with stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            raise SkullVAEError(f"{what} is not a regular file (a FIFO, device or folder); refusing to read it", path)
        try:
            data = stream.read(max_bytes + 1)
        except OSError as exc:
            raise SkullVAEError(f"cannot read {what}: {exc.strerror or exc}", path) from None
    if len(data) > max_bytes:
        raise SkullVAEError(f"{what} is larger than {max_bytes:,} bytes; refusing to read it", path)
    return data
