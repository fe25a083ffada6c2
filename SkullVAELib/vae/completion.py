"""Skull shape completion by latent arithmetic (paper section 2.4, eq. 12).

``complete`` maps the defective skull to the model grid, encodes μ (inference uses the
posterior mean μ, never a sample), shifts it by γ·DEV of the chosen (or automatically
classified) defect type, decodes with the bundle's completion decoder (the decoupled
decoder of an aggregated VAE), and builds the implant at the input's original resolution
(see :mod:`SkullVAELib.implant.cleanup` for the cleaning rule). By default the completed skull is
the defective input ∪ the implant, so the patient's bone is never altered;
``keep_patient_bone=False`` returns the raw decoded skull as the paper did.

With the test-time fit on (``fit.steps > 0``, :mod:`SkullVAELib.vae.testtime_fit`), the
completion decodes the fitted latent instead: z_fit + γ·DEV ("refit") or z_fit ("outside").

The optional uncertainty map decodes K seeded samples around the latent the completion decodes,
with the encoder's spread σ: z = μ + ε·σ + γ·DEV (i.e. z ~ q(z|x) + γ·DEV) without the fit, and
z = z_fit + γ·DEV + ε·σ ("refit"; z_fit + ε·σ for "outside") after it, ε ~ N(0, I). It gives the
voxel-wise frequency of bone, interpolated back to the original grid (float32 (I, J, K)).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from SkullVAELib.core.config import DEFECTS, CompletionConfig, check_gamma, check_inference_precision
from SkullVAELib.core.devices import resolve_device
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback, no_progress
from SkullVAELib.data.grid import from_model_grid, to_model_grid
from SkullVAELib.implant import cleanup as implant_ops
from SkullVAELib.io.image import ALL_BONE_FRACTION, SkullImage
from SkullVAELib.vae.centroids import classifier_of, nearest_centroid_defect
from SkullVAELib.vae.networks import reparameterize
from SkullVAELib.vae.testtime_fit import FitConfig, fit_to_patient

NO_DEFECT = "none"  # γ = 0 without centroids: plain reconstruction
# Channels-last-3d (NDHWC) convolutions: the same float32 result, a faster encode/decode on CPUs
# (docs/BENCHMARKS.md); oneDNN picks its fastest kernels for this layout.
CHANNELS_LAST = True


@dataclass
class CompletionResult:
    """Output of :func:`complete`; every image lies on the input's exact geometry.

    Attributes:
        completed: the completed skull (input ∪ implant, or the raw decoded skull).
        implant: the cleaned implant, disjoint from the input bone.
        defect: "cranial" / "facial" (or "none" for γ = 0 without centroids).
        confidence: probability of ``defect`` from the classifier (1.0 when given by the user).
        probabilities_model_grid: float32 (X, Y, Z) decoded bone probabilities.
        uncertainty: float32 (I, J, K) bone frequency over K samples around the decoded latent, or None.
        timings: seconds per stage (to_grid, encode, decode, implant, back_to_grid, ...).
        gamma, mu: the γ used and μ (d,) of the input.
        raw (property): the raw decoded skull at original resolution (trilinear/nearest back
            to the original grid, thresholded); computed on first access.
    """

    completed: SkullImage
    implant: SkullImage
    defect: str
    confidence: float
    probabilities_model_grid: np.ndarray
    uncertainty: np.ndarray | None
    timings: dict[str, float]
    gamma: float = 1.0
    mu: np.ndarray | None = None
    probabilities: dict = field(default_factory=dict)  # defect -> classifier probability
    _like: SkullImage | None = field(default=None, repr=False)
    _resample: str = field(default="area", repr=False)
    _threshold: float = field(default=0.5, repr=False)
    _raw: SkullImage | None = field(default=None, repr=False)

    @property
    def raw(self) -> SkullImage:
        if self._raw is None:
            self._raw = raw_skull(self.probabilities_model_grid, self._like, self._threshold, self._resample)
        return self._raw

    @property
    def implant_volume_mm3(self) -> float:
        return float(np.count_nonzero(self.implant.mask)) * self.implant.voxel_volume_mm3


def raw_skull(prob: np.ndarray, like: SkullImage, threshold: float = 0.5, mode: str = "area") -> SkullImage:
    """Decoded probabilities (X, Y, Z) back on ``like``'s grid, thresholded: the raw decoded skull."""
    return like.with_mask(from_model_grid(prob, like, mode=mode) > threshold, title="raw decoded skull")


def check_input(skull: SkullImage) -> None:
    """Empty or all-bone masks cannot be completed (SkullVAEError naming the source)."""
    source = skull.metadata.get("source")
    n = int(np.count_nonzero(skull.mask))
    if n == 0:
        raise SkullVAEError("empty mask: no bone voxels to complete", source)
    if n >= ALL_BONE_FRACTION * skull.mask.size:
        raise SkullVAEError("all-bone mask; expected a skull segmentation", source)


def choose_defect(bundle, mu: np.ndarray, cfg: CompletionConfig) -> tuple[str, float, dict]:
    """(defect, confidence, {defect: probability}) for ``cfg.defect`` ("auto" classifies μ (d,))."""
    centroids = bundle.centroids or {}
    if cfg.defect != "auto":
        if cfg.gamma != 0:
            bundle.dev(cfg.defect)  # raises when the model has no centroid for it
        return cfg.defect, 1.0, {cfg.defect: 1.0}
    available = [d for d in DEFECTS if d in centroids]
    if not available:
        if cfg.gamma == 0:
            return NO_DEFECT, 1.0, {}
        bundle.require_completion()
    classifier = classifier_of(bundle)
    if classifier is not None and set(classifier.classes) <= set(available):
        p = classifier.probabilities(mu)[0]
        probs = {c: float(v) for c, v in zip(classifier.classes, p, strict=True)}
    else:
        name, conf = nearest_centroid_defect(mu, {d: centroids[d] for d in available})
        probs = {name: conf}
    best = max(probs, key=probs.get)
    return best, probs[best], probs


def _latent_shift(bundle, defect: str, gamma: float) -> np.ndarray:
    if gamma == 0 or defect == NO_DEFECT:
        return np.zeros(bundle.network.latent_size, dtype=np.float32)
    return (gamma * np.asarray(bundle.dev(defect), dtype=np.float64)).astype(np.float32)


@contextlib.contextmanager
def _inference_modules(bundle, device: torch.device, channels_last: bool):
    """(encoder, completion decoder) on ``device`` in eval mode, channels-last-3d during the call.

    The weights are put back in the default layout afterwards, so the bundle is unchanged.
    """
    modules = (bundle.encoder.to(device).eval(), bundle.completion_decoder.to(device).eval())
    if not channels_last:
        yield modules
        return
    for module in modules:
        module.to(memory_format=torch.channels_last_3d)
    try:
        yield modules
    finally:
        for module in modules:
            module.to(memory_format=torch.contiguous_format)


def _autocast(device: torch.device, precision: str):
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); the CPU for a module holding neither."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _bone_frequency(
    decoder,
    centre: torch.Tensor,
    logvar: torch.Tensor,
    shift: torch.Tensor,
    shape: tuple[int, ...],
    cfg: CompletionConfig,
    report,
    start: float,
) -> np.ndarray:
    """float32 (X, Y, Z): the frequency of bone over K = ``cfg.uncertainty_samples`` decodings.

    z_k = centre + ε_k·σ + shift, ε_k ~ N(0, I) seeded by ``cfg.seed``, σ = exp(½ log σ²);
    ``centre``, ``logvar``, ``shift``: (1, d) on the decoder's device. Progress runs from ``start``
    to 0.7.
    """
    device = centre.device
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    counts = torch.zeros(shape, dtype=torch.float32, device=device)
    for k in range(cfg.uncertainty_samples):
        z = reparameterize(centre, logvar, generator=generator) + shift
        counts += (torch.sigmoid(decoder.logits(z).float())[0, 0] > cfg.threshold).float()
        report(
            start + (0.7 - start) * (k + 1) / cfg.uncertainty_samples,
            f"uncertainty sample {k + 1}/{cfg.uncertainty_samples}",
        )
    return np.ascontiguousarray((counts / cfg.uncertainty_samples).cpu().numpy())


@torch.inference_mode()
def _encode_decode(
    bundle,
    occupancy: np.ndarray,
    cfg: CompletionConfig,
    device: torch.device,
    timings,
    report,
    precision="float32",
    sample: bool = True,
):
    """μ, log σ² (d,), the defect choice, the decoded probabilities (X, Y, Z) float32, the
    uncertainty samples' bone frequency (X, Y, Z) around μ + γ·DEV (None unless ``sample`` and K > 0)
    and the bone the shift adds (X, Y, Z) bool or None."""
    t = time.perf_counter()
    x = torch.from_numpy(occupancy)[None, None].to(device)
    if CHANNELS_LAST:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with _inference_modules(bundle, device, CHANNELS_LAST) as (encoder, decoder), _autocast(device, precision):
        mu, logvar = encoder(x)
        mu, logvar = mu.float(), logvar.float()
        mu = bundle.latent_code(mu, logvar)  # the code the completion decoder was trained on
        timings["encode"] = time.perf_counter() - t
        mu_np = mu[0].cpu().numpy()
        defect, confidence, probs = choose_defect(bundle, mu_np, cfg)
        report(0.45, f"defect {defect} ({confidence:.2f}); decoding with γ = {cfg.gamma:g}")
        t = time.perf_counter()
        shift = torch.from_numpy(_latent_shift(bundle, defect, cfg.gamma)).to(device)
        logits = decoder.logits(mu + shift)
        prob = np.ascontiguousarray(torch.sigmoid(logits.float())[0, 0].cpu().numpy())
        added = None  # what the latent shift γ·DEV adds to the reconstruction: where the defect is
        if bool(shift.abs().max() > 0):
            reconstruction = torch.sigmoid(decoder.logits(mu).float())[0, 0].cpu().numpy()
            added = (prob > cfg.threshold) & ~(reconstruction > cfg.threshold)
        timings["decode"] = time.perf_counter() - t
        samples = None
        if sample and cfg.uncertainty_samples > 0:
            t = time.perf_counter()
            samples = _bone_frequency(decoder, mu, logvar, shift[None], prob.shape, cfg, report, 0.5)
            timings["uncertainty_decode"] = time.perf_counter() - t
    return mu_np, logvar[0].cpu().numpy(), defect, confidence, probs, prob, samples, added


@torch.inference_mode()
def _bone_frequency_around(
    bundle, z: np.ndarray, logvar: np.ndarray, shape: tuple[int, ...], cfg: CompletionConfig, precision, timings, report
) -> np.ndarray:
    """float32 (X, Y, Z): the uncertainty samples around the fitted latent ``z`` (d,) the completion
    decoded (z_fit + γ·DEV or z_fit), with the encoder's log σ² (d,) as the spread."""
    t = time.perf_counter()
    device = _module_device(bundle.completion_decoder)
    with _inference_modules(bundle, device, CHANNELS_LAST) as (_, decoder), _autocast(device, precision):
        centre = torch.from_numpy(np.asarray(z, dtype=np.float32))[None].to(device)
        spread = torch.from_numpy(np.asarray(logvar, dtype=np.float32))[None].to(device)
        samples = _bone_frequency(decoder, centre, spread, torch.zeros_like(centre), shape, cfg, report, 0.6)
    timings["uncertainty_decode"] = time.perf_counter() - t
    return samples


def complete(
    skull: SkullImage,
    bundle,
    cfg: CompletionConfig | None = None,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    precision: str = "float32",
    fit=None,
) -> CompletionResult:
    """Complete a defective skull; see the module docstring.

    Args:
        skull: defective skull, mask (I, J, K) with its geometry (never modified).
        bundle: a ``ModelBundle``; centroids are needed for any γ ≠ 0.
        cfg: completion settings (γ, defect, threshold, implant cleaning, uncertainty).
        device: "auto" (CUDA if available), "cpu", "cuda"; CUDA out of memory falls back to CPU.
        progress: ``progress(stage="complete", fraction, message)``.
        precision: "float32" (default, exact) or "bfloat16" (autocast for the networks: faster
            on CPUs with AVX-512-BF16/AMX and on GPUs, docs/BENCHMARKS.md; probabilities differ
            slightly, so a few voxels at the threshold may flip).
        fit: a ``testtime_fit.FitConfig`` for the test-time fit of z to the patient's bone
            (default: ``FitConfig(steps=cfg.fit_steps)``; no fit when 0 steps).

    Returns:
        CompletionResult on the input's exact geometry.
    """
    cfg = cfg or CompletionConfig()
    report_cb = progress or no_progress

    def report(fraction: float, message: str) -> None:
        report_cb("complete", fraction, message)

    check_inference_precision(precision)
    check_gamma(cfg.gamma)
    check_input(skull)
    if cfg.gamma != 0:
        bundle.require_completion()
    resample = cfg.resample or bundle.resample  # the mode the model was trained with, unless asked
    timings: dict[str, float] = {}
    grid = tuple(bundle.network.grid)
    report(0.0, f"resampling to the model grid {'x'.join(map(str, grid))}")
    t = time.perf_counter()
    occupancy = np.ascontiguousarray(to_model_grid(skull, grid, mode=resample), dtype=np.float32)
    timings["to_grid"] = time.perf_counter() - t
    report(0.15, "encoding")
    fit = fit if fit is not None else FitConfig(steps=cfg.fit_steps)
    out = _encode_decode_anywhere(bundle, occupancy, cfg, device, timings, report, precision, fit.steps == 0)
    mu, logvar, defect, confidence, probs, prob, samples, added = out
    voxel_mm = implant_ops.model_spacing(skull, grid)
    if fit.steps > 0:  # z fitted to the patient's bone, then shifted (testtime_fit)
        prob, added, z = _fit(bundle, occupancy, mu, defect, prob, added, voxel_mm, cfg, fit, timings, report)
        if cfg.uncertainty_samples > 0:  # sampled around the latent the completion decoded
            samples = _bone_frequency_around(bundle, z, logvar, prob.shape, cfg, precision, timings, report)
    implant_mask = _implant(prob, occupancy, skull, voxel_mm, added, cfg, timings, report)

    result = CompletionResult(
        completed=skull,  # replaced below
        implant=skull.with_mask(implant_mask, title="implant"),
        defect=defect,
        confidence=confidence,
        probabilities_model_grid=prob,
        uncertainty=None,
        timings=timings,
        gamma=float(cfg.gamma),
        mu=mu,
        probabilities=probs,
        _like=skull,
        _resample=resample,
        _threshold=cfg.threshold,
    )
    _compose(result, skull, implant_mask, samples, cfg, timings, report)
    report(1.0, f"implant {result.implant_volume_mm3 / 1000:.1f} cm³")
    return result


def _encode_decode_anywhere(bundle, occupancy, cfg, device, timings, report, precision, sample=True):
    """:func:`_encode_decode` on ``device``; on CUDA out of memory, again on the CPU."""
    dev = resolve_device(device)
    try:
        return _encode_decode(bundle, occupancy, cfg, dev, timings, report, precision, sample)
    except torch.cuda.OutOfMemoryError:
        report(0.15, "CUDA out of memory; falling back to the CPU")
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        return _encode_decode(bundle, occupancy, cfg, torch.device("cpu"), timings, report, precision, sample)


def _fit(bundle, occupancy, mu, defect, prob, added, voxel_mm, cfg, fit, timings, report):
    """(prob (X, Y, Z), added (X, Y, Z) bool, z (d,)) after the test-time fit of z to the patient's
    bone (``testtime_fit``); z is the latent the completion now decodes: z_fit + γ·DEV ("refit") or
    z_fit ("outside"). The decoder runs on the device its weights are on."""
    report(0.5, f"fitting z to the patient's bone ({fit.steps} steps)")
    t = time.perf_counter()
    shift = _latent_shift(bundle, defect, cfg.gamma)
    decoder = bundle.completion_decoder
    result, added = fit_to_patient(
        decoder, occupancy, mu, shift, prob, added, voxel_mm, fit, cfg.threshold, device=_module_device(decoder)
    )
    timings["fit"] = time.perf_counter() - t
    before, after = result.masked_dice
    report(0.6, f"fit: Dice loss on the patient's bone {before:.3f} -> {after:.3f}")
    return result.probabilities, added, result.z


def _implant(prob, occupancy, skull: SkullImage, voxel_mm, added, cfg, timings, report) -> np.ndarray:
    """bool (I, J, K): the implant, cleaned on the model grid, then on the patient's grid."""
    report(0.7, "extracting the implant")
    t = time.perf_counter()
    region = implant_ops.clean_model_grid_implant(
        prob > cfg.threshold, occupancy, voxel_mm, cfg.min_island_mm3, cfg.max_distance_mm, added
    )
    timings["implant_model_grid"] = time.perf_counter() - t
    t = time.perf_counter()
    implant_mask = implant_ops.implant_at_original(prob, skull, region, cfg.threshold, cfg.min_island_mm3)
    timings["implant_original"] = time.perf_counter() - t
    return implant_mask


def _compose(result, skull: SkullImage, implant_mask, samples, cfg, timings, report) -> None:
    """Fill ``result.completed`` (and ``result.uncertainty``) on the patient's grid."""
    report(0.85, "composing the completed skull")
    t = time.perf_counter()
    if cfg.keep_patient_bone:
        result.completed = skull.with_mask(skull.mask | implant_mask, title="completed skull")
    else:
        result.completed = skull.with_mask(result.raw.mask, title="completed skull (raw decoded)")
    timings["back_to_grid"] = time.perf_counter() - t
    if samples is not None:
        t = time.perf_counter()
        result.uncertainty = from_model_grid(samples, skull, mode=result._resample)
        timings["uncertainty_back_to_grid"] = time.perf_counter() - t
