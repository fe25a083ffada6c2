"""The one owner of the product pipeline: defective skull → defect → implant source → completed skull.

nnU-Net's predictor pattern: configured once from :class:`CompletionSettings`, it loads what its
sources need once (a model folder, or nothing), then completes skull after skull::

    completer = Completer(CompletionSettings(model=None))     # the rim fit needs no model
    result = completer.complete(read_skull("defective.nrrd"))
    result.implant, result.source, result.skipped, result.timings
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from SkullVAELib.bundle.folder import ModelFolder
from SkullVAELib.core.config import QUALITY_FLOOR, REVIEW_BELOW
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import ProgressCallback, no_progress
from SkullVAELib.core.unchanged import hold_unchanged
from SkullVAELib.implant.check import check_implant
from SkullVAELib.implant.postprocess import postprocess_implant
from SkullVAELib.implant.sources import source_class
from SkullVAELib.io.image import SkullImage
from SkullVAELib.pipeline.context import CompletionContext
from SkullVAELib.pipeline.defect import decide_defect
from SkullVAELib.pipeline.head_box import find_head, on_the_scan
from SkullVAELib.pipeline.result import Completion
from SkullVAELib.pipeline.settings import CompletionSettings
from SkullVAELib.pipeline.skull_checks import check_is_a_skull

MIN_BONE_VOXELS = 1  # an empty mask cannot be completed
# ... nor a speck: a skull's bone is several hundred cm³ (SkullFix 056: 496, a phantom: 405); the rim fit's rays
# found no shell in a few voxels and stopped on a traceback
MIN_BONE_MM3 = 1000.0
# γ = 0 with the model source: the model's reconstruction of the skull, an empty implant and this note
RECONSTRUCTION_NOTE = "γ = 0: the model reconstructs the skull and adds no implant (the implant is empty)"
MIN_EXTENT_VOXELS = 8  # a skull needs some depth along every axis (a 2D slice is refused)
FACIAL_SOURCES_HINT = (
    "a facial defect needs the learned refiner, an atlas set or a trained model: "
    "`skullvae models download NAME` (or give --model DIR, --refiner FILE, --atlas DIR)"
)


class Completer:
    """Completes defective skulls with one set of :class:`CompletionSettings`.

    Args:
        settings: what to do (model folder, source order, each source's settings).
        folder: the model folder's parts (default: opened from ``settings``; pass one to share
            loaded parts between Completers, e.g. the methods of an evaluation).
    """

    def __init__(self, settings: CompletionSettings, folder: ModelFolder | None = None) -> None:
        self.settings = settings
        self.folder = folder or settings.model_folder()
        self.sources = [source_class(name)(settings) for name in settings.sources]

    def complete(
        self, skull: SkullImage, gamma: float | None = None, progress: ProgressCallback | None = None
    ) -> Completion:
        """Complete one skull (its mask is never modified); ``gamma`` overrides the settings' γ."""
        return self.sweep(skull, [self.settings.vae.gamma if gamma is None else gamma], progress)[0]

    def sweep(
        self, skull: SkullImage, gammas: Sequence[float], progress: ProgressCallback | None = None
    ) -> list[Completion]:
        """One :class:`Completion` per γ; work that does not depend on γ (defect, rim fit, learned
        and atlas implants) is done once."""
        if skull.mask.ndim != 3 or min(skull.shape) < MIN_EXTENT_VOXELS:
            raise SkullVAEError(f"not a 3D volume (shape {skull.shape})", skull.metadata.get("source"))
        bone = np.count_nonzero(skull.mask)
        if bone < MIN_BONE_VOXELS:
            raise SkullVAEError("empty mask: no bone voxels to complete", skull.metadata.get("source"))
        if bone * skull.voxel_volume_mm3 < MIN_BONE_MM3:
            raise SkullVAEError(
                f"too little bone to complete ({bone * skull.voxel_volume_mm3 / 1000.0:.2f} cm³ in {bone} voxels; "
                "a skull holds several hundred cm³)",
                skull.metadata.get("source"),
            )
        cache: dict = {}
        head = find_head(skull)  # a whole-body scan: its head alone, pasted back onto the scan's grid
        work = skull if head is None else head.crop(skull)
        # read-only while it is completed: the caches of its bone listing, block occupancy and mirror
        # plane then know it unchanged without a pass over it (core.unchanged)
        with hold_unchanged(work.mask):
            check_is_a_skull(work)  # an inverted mask, a filled cranium: one line, not "no cranial defect found"
            done = [self._complete_one(work, float(g), cache, progress or no_progress) for g in gammas]
        return done if head is None else [on_the_scan(head, skull, completion) for completion in done]

    def _complete_one(self, skull: SkullImage, gamma: float, cache: dict, progress: ProgressCallback) -> Completion:
        start = time.perf_counter()
        context = CompletionContext(skull, self.settings.with_gamma(gamma), self.folder, progress=progress, cache=cache)
        with context.timed("defect"):
            decision = decide_defect(context)
        context.defect = decision.defect
        chosen, skipped, tried = self._choose(context)
        if chosen is None:
            implant, name, variant, quality, check = np.zeros(skull.shape, dtype=bool), "none", "", None, None
            review_lines: list[str] = []
            if not tried and self._reconstructs(context):  # γ = 0: the model's reconstruction, no implant
                name, warnings = "model", [RECONSTRUCTION_NOTE]
                skipped.pop("model", None)
            elif not tried:  # no source could serve: a missing part, not an empty result
                raise _no_source_error(decision, skipped, skull)
            else:
                tried_reasons = {n: skipped[n] for n in tried}
                warnings = [f"no implant: {n}: {why}" for n, why in (tried_reasons or skipped).items()]
        else:
            source, proposal, implant, quality = chosen
            name, variant, check = source.name, proposal.variant, proposal.self_check
            warnings = list(proposal.messages)
            implant = self._finished(context, implant, warnings)
            quality = self._finished_quality(context, implant, quality)  # what is delivered is what is scored
            review_lines = (
                review_note(quality) if decision.defect == "cranial" else []
            )  # the band's evidence is cranial
            warnings += review_lines
            what = f"{decision.defect} implant"
            warnings += check_implant(implant, skull.voxel_volume_mm3, proposal.holes, what, proposal.expected_mm3)
        completed = self._completed_skull(context, implant)
        uncertainty = None
        if self.settings.vae.uncertainty_samples > 0:
            uncertainty = context.model_completion().uncertainty
        context.timings["total"] = time.perf_counter() - start
        used = chosen[0].uses_gamma if chosen is not None else name == "model"
        return Completion(
            completed=completed,
            implant=skull.with_mask(implant, title="implant"),
            source=name,
            defect=decision.defect,
            defect_reason=decision.reason,
            gamma=gamma,
            variant=variant,
            confidence=decision.confidence,
            gamma_used=used,
            skipped=skipped,
            warnings=list(dict.fromkeys(warnings)),
            timings=dict(context.timings),
            uncertainty=uncertainty,
            quality=None if quality is None else float(quality.score),
            quality_note="" if quality is None else quality.explanation,
            quality_parts={} if quality is None else {"components": quality.components, "measures": quality.measures},
            review=bool(review_lines),
            self_check={} if check is None else check.summary(),
            self_check_note="" if check is None else check.note(),
        )

    def _reconstructs(self, context: CompletionContext) -> bool:
        """True at γ = 0 when the model source is among the sources and there is a model: the call is the
        model's reconstruction (γ = 0 adds no latent shift), whose implant is empty by definition."""
        return context.settings.vae.gamma == 0 and "model" in self.settings.sources and self.folder.has_vae

    def _choose(self, context: CompletionContext):
        """((source, proposal, implant, quality) chosen, or None; {source: why it was passed over};
        the names of the sources that applied).

        The first source whose implant is not empty and whose quality score (rim agreement,
        :mod:`SkullVAELib.implant.quality`) reaches ``QUALITY_FLOOR`` wins; when every implant scores
        below it, the best-scoring one is kept and said to be doubtful.
        """
        skipped: dict[str, str] = {}
        tried: list[str] = []
        doubtful: list[tuple] = []
        for source in self.sources:
            reason = source.applies(context)
            if reason is not None:
                skipped[source.name] = reason
                continue
            tried.append(source.name)
            proposal, implant, quality = self._proposal(context, source)
            if not implant.any():
                skipped[source.name] = "; ".join(proposal.messages) or "it proposed no implant"
                continue
            if quality is None or quality.score >= QUALITY_FLOOR:
                return (source, proposal, implant, quality), skipped, tried
            skipped[source.name] = f"quality {quality.score:.2f} below {QUALITY_FLOOR:g}: {quality.explanation}"
            doubtful.append((source, proposal, implant, quality))
        if not doubtful:
            return None, skipped, tried
        best = max(doubtful, key=lambda c: c[3].score)
        del skipped[best[0].name]
        best[1].messages.append(
            f"doubtful implant: {best[3].explanation}; no source made one of quality {QUALITY_FLOOR:g} or more"
        )
        return best, skipped, tried

    def _proposal(self, context: CompletionContext, source):
        """(proposal, implant bool (I, J, K) post-processed and bone-free, quality or None) of one
        source, computed once per skull (per γ for a source that uses γ)."""
        key = ("proposal", source.name, context.settings.vae.gamma if source.uses_gamma else None)
        if key not in context.cache:
            with context.timed(source.name):
                proposal = source.propose(context)
                implant = np.asarray(proposal.implant, dtype=bool) & ~context.skull.mask
                if not proposal.postprocessed:
                    implant = postprocess_implant(implant, context.skull, self.settings.postprocess)
            for step, seconds in proposal.timings.items():
                context.timings[f"{source.name}_{step}"] = seconds
            quality = context.implant_quality(implant) if self.settings.quality and implant.any() else None
            context.cache[key] = (proposal, implant, quality)
        return context.cache[key]

    def _finished(self, context: CompletionContext, implant: np.ndarray, warnings: list[str]) -> np.ndarray:
        """The implant after the finishing steps of the settings (smoothing, gap, thickness), if any."""
        if not self.settings.finish.active:
            return implant
        from SkullVAELib.implant.finish import finish_implant

        with context.timed("finish"):
            finished = finish_implant(implant, context.skull, self.settings.finish)
        if not finished.any():
            warnings.append("the finishing (smoothing, gap, minimum thickness) removed the whole implant")
        return finished

    def _finished_quality(self, context: CompletionContext, implant: np.ndarray, quality):
        """The quality score of the finished ``implant``: the chosen source's score where nothing was finished
        (or no score was asked for), else the score again on what the finishing left (a gap to the bone or a
        smoothing moves the rim; the source was chosen on its unfinished implant)."""
        if quality is None or not self.settings.finish.active:
            return quality
        from SkullVAELib.implant.quality import ImplantQuality

        if not implant.any():
            return ImplantQuality(0.0, {"volume": 0.0}, {"volume_mm3": 0.0}, "empty implant after the finishing")
        return context.implant_quality(implant)

    def _completed_skull(self, context: CompletionContext, implant: np.ndarray) -> SkullImage:
        skull = context.skull
        if self.settings.vae.keep_patient_bone:
            return skull.with_mask(skull.mask | implant, title="completed skull")
        if not self.folder.has_vae:
            raise SkullVAEError("the raw decoded skull (--raw) needs a trained model (--model)")
        with context.timed("raw_skull"):
            return skull.with_mask(context.model_completion().raw.mask, title="completed skull (raw decoded)")


def _no_source_error(decision, skipped: dict[str, str], skull: SkullImage) -> SkullVAEError:
    """The one-line error when no implant source applies (``decision``: the defect decision; ``skipped``:
    why each source was passed over), with the way out for the user.

    When ``--defect auto`` took the skull for facial only because the rim fit found no enclosed hole in the
    vault, the skull may as well be complete: the error says so first, then what each kind of defect needs
    (the sources' own reasons add nothing there: each is "for cranial defects" or "not installed")."""
    if decision.guessed:
        complete = "" if decision.hole_off_vault else ": a complete skull has nothing to fill"
        return SkullVAEError(
            f"no cranial defect found ({decision.guessed}){complete}; {FACIAL_SOURCES_HINT}; "
            "give --defect cranial if the defect is cranial",
            skull.metadata.get("source"),
        )
    reasons = "; ".join(f"{n}: {why}" for n, why in skipped.items())
    hint = FACIAL_SOURCES_HINT if decision.defect == "facial" else "no implant source applies"
    return SkullVAEError(f"{hint} ({reasons})", skull.metadata.get("source"))


def review_note(quality) -> list[str]:
    """[one line asking the user to check the implant] when its quality score (:class:`ImplantQuality` or
    None) lies in [``QUALITY_FLOOR``, ``REVIEW_BELOW``), else [] (below the floor it is called doubtful).

    Cranial implants only (the caller's choice): the band was chosen on them, and a facial implant's score (the
    plate's thickness at the junction) was never set against its DSC. On held-out skulls such scores mark rims the
    fill continues less well (the step to the skull base, the frontal sinus, the orbit's roof), where half or more
    of the implants missed the per-case bar (docs/results/issue-24-2026-12-07.md, "An implant to check: the quality score's
    review band")."""
    if quality is None or not QUALITY_FLOOR <= quality.score < REVIEW_BELOW:
        return []
    weakest = min(quality.components, key=quality.components.get) if quality.components else "none"
    return [
        f"check this implant before use: its quality {quality.score:.2f} is under {REVIEW_BELOW:g} (weakest: "
        f"{weakest}): on held-out skulls such implants often missed DSC 0.85 or lay more than 3 mm off (HD95)"
    ]
