"""One skull's shared work while the sources run: computed once, whichever source asks first."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from SkullVAELib.bundle.folder import ModelFolder
from SkullVAELib.core.progress import ProgressCallback, no_progress
from SkullVAELib.io.image import SkullImage
from SkullVAELib.pipeline.settings import CompletionSettings


@dataclass
class CompletionContext:
    """What the sources of one :meth:`Completer.complete` call share.

    Attributes:
        skull: the defective skull (never modified).
        settings: the Completer's settings (γ of this call in ``settings.vae.gamma``).
        folder: the model folder's parts (loaded once per Completer).
        defect: "cranial" or "facial", decided before the sources run; "auto" until then, so that the
            model's completion asked for by the decision (:func:`~SkullVAELib.pipeline.defect.decide_defect`)
            lets the model's classifier choose the defect.
        progress: ``progress(stage, fraction, message)``.
        timings: seconds per step (sources add theirs).
        cache: results shared between sources and between the γ values of a sweep.
    """

    skull: SkullImage
    settings: CompletionSettings
    folder: ModelFolder
    defect: str = "auto"
    progress: ProgressCallback = no_progress
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict = field(default_factory=dict)

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Add the seconds of the ``with`` block to ``timings[key]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start

    def vault_skull(self) -> SkullImage:
        """The skull as the rays of the vault read it (the rim fit, the mirror plane, a cranial implant's quality):
        ``skull`` less the pieces of bone apart from its largest piece that reach over its vault or lie inside it,
        and every speck apart from it (:func:`~SkullVAELib.implant.vault.without_vault_pieces`), or ``skull`` itself
        where there is none (once per skull). A head rest under the occiput, read as the outermost bone, hid an
        occipital hole or bent the rim's outer radius towards it (DSC 0.22 at quality 0.82); a jaw or a spine apart
        from the skull lies below the vault and stays. The completed skull handed back holds all of ``skull``, and the implant none of it."""
        if "vault" not in self.cache:
            from SkullVAELib.implant.vault import without_vault_pieces

            self.cache["vault"] = without_vault_pieces(self.skull)
        return self.cache["vault"][0]

    def implant_quality(self, implant: np.ndarray, defect: str | None = None):
        """The quality score (:class:`~SkullVAELib.implant.quality.ImplantQuality`) of a non-empty ``implant`` (bool
        (I, J, K)) as an implant of ``defect`` (default: this call's): against the skull as the vault's rays read it
        for a cranial defect (:meth:`vault_skull`), the whole skull for a facial one, with the rim fit's settings.
        The last score per defect is kept: an implant of the same content asked about again (the rim fit's, scored by
        the defect decision and then as the rimfit source's proposal) is not scored twice. No implant is modified
        while the Completer works on it, so the kept one is compared as it is, its bone count first (a few ms)."""
        from SkullVAELib.implant.quality import implant_quality

        defect = defect or self.defect
        if defect == "cranial" and self._rim_fit_may_join():
            self.rim_fit()  # its join first: every cranial implant scored against the one skull the rays read
        count = int(np.count_nonzero(implant))
        last = self.cache.get(("quality", defect))
        if (
            last is not None
            and last[1] == count
            and last[0].shape == implant.shape
            and np.array_equal(last[0], implant)
        ):
            return last[2]
        skull = self.vault_skull() if defect == "cranial" else self.skull
        with self.timed("quality"):
            quality = implant_quality(skull, implant, rim=self.settings.rimfit.config)
        self.cache[("quality", defect)] = (implant, count, quality)
        return quality

    def _rim_fit_may_join(self) -> bool:
        """Whether a source of this call runs the rim fit, which may join a hollow skull's tables
        (:meth:`rim_fit`) and so change :meth:`vault_skull`."""
        return self.settings.rimfit.config.join_hollow and bool({"rimfit", "residual"} & set(self.settings.sources))

    def mirror_transform(self) -> np.ndarray:
        """(4, 4) LPS reflection about the skull's mid-sagittal plane (computed once per skull)."""
        if "mirror" not in self.cache:
            from SkullVAELib.implant.symmetry import find_mirror_plane

            self.progress("rimfit", 0.0, "finding the mid-sagittal plane")
            with self.timed("mirror_plane"):
                self.cache["mirror"] = find_mirror_plane(self.vault_skull()).transform()
        return self.cache["mirror"]

    def rim_fit(self):
        """The rim fit's :class:`~SkullVAELib.implant.rimfit.RimFitResult` (once per skull; it does not depend on γ).
        Where it finds an enclosed hole (a vault's or not) and the skull reads hollow to its rays (a mask thresholded
        above the diploë), the skull's tables are joined and it is fitted again on that (:meth:`_read_hollow`)."""
        key = ("rimfit", self.settings.rimfit.mirror, self.settings.rimfit.shapes)
        if key not in self.cache:
            result = self._fit_rim()
            if result.holes:
                result = self._read_hollow(result)
            self.cache[key] = result
        return self.cache[key]

    def _fit_rim(self):
        """One rim fit on :meth:`vault_skull` with the settings' cues; its timings added to :attr:`timings`."""
        from SkullVAELib.implant.rimfit import rim_fit

        transform = self.mirror_transform() if self.settings.rimfit.mirror else None
        self.progress("rimfit", 0.3, "fitting the implant to the defect's rim")
        shapes = self.shape_cue() if self.settings.rimfit.shapes else None
        result = rim_fit(self.vault_skull(), self.settings.rimfit.config, mirror_transform=transform, shapes=shapes)
        result.messages += self.cache["vault"][1]  # what vault_skull left out
        for name, seconds in result.timings.items():
            self.timings[f"rimfit_{name}"] = self.timings.get(f"rimfit_{name}", 0.0) + seconds
        return result

    def _read_hollow(self, result):
        """``result`` as it is where its rays do not read the vault hollow (:func:`~SkullVAELib.implant.hollow.
        hollow_share`); else with a note, and, with ``join_hollow`` (default), the rim fit again on the skull with its
        tables joined (:func:`~SkullVAELib.implant.hollow.join_tables`, :meth:`vault_skull` from then on), noted with
        what still reads hollow. The mirror plane found on the hollow skull stays (its outer surface is the same)."""
        from SkullVAELib.implant.hollow import hollow_note, hollow_share, join_tables, still_hollow_note

        skull, _ = result.in_frame(self.vault_skull())
        join = self.settings.rimfit.config.join_hollow
        notes = hollow_note(hollow_share(skull, result.raymap), self.skull.metadata.get("kind", "binary"), join)
        if not (notes and join):
            result.messages += notes
            return result
        self.progress("rimfit", 0.3, "joining the hollow skull's tables")
        with self.timed("rimfit_join_tables"):
            vault, left_out = self.cache["vault"]
            self.cache["vault"] = (vault.with_mask(join_tables(skull, result.raymap)), left_out + notes)
        result = self._fit_rim()  # its messages hold the note, with what vault_skull left out
        still = still_hollow_note(hollow_share(result.in_frame(self.vault_skull())[0], result.raymap))
        result.messages += still
        self.cache["join_notes"] = notes + still
        return result

    @property
    def join_notes(self) -> list[str]:
        """The notes of a hollow skull whose tables :meth:`rim_fit` joined (also among its messages), else []."""
        return list(self.cache.get("join_notes", []))

    def self_check(self):
        """The rim fit tried on the skull's intact vault (:class:`~SkullVAELib.implant.selfcheck.SelfCheck`,
        once per skull), or None when the settings do not ask for it or the rim fit found no hole."""
        if not self.settings.rimfit.self_check or not self.rim_fit().holes:
            return None
        key = ("selfcheck", self.settings.rimfit.mirror, self.settings.rimfit.shapes)
        if key not in self.cache:
            from SkullVAELib.implant.selfcheck import check_rim_fit

            transform = self.mirror_transform() if self.settings.rimfit.mirror else None
            shapes = self.shape_cue() if self.settings.rimfit.shapes else None
            self.progress("rimfit", 0.6, "trying the fill on the skull's intact vault")
            with self.timed("rimfit_self_check"):
                config = self.settings.rimfit.config
                self.cache[key] = check_rim_fit(self.vault_skull(), self.rim_fit(), config, transform, shapes)
        return self.cache[key]

    def shape_cue(self):
        """The rim fit's cue where the mirror has none: the model folder's shape bank, else the installed
        shape model (None when neither is there)."""
        if self.folder.has_shapes:
            return self.folder.shapes()
        from SkullVAELib.implant.shapemodel import installed_shape_model

        return installed_shape_model()

    def model_completion(self):
        """The model's :class:`~SkullVAELib.vae.completion.CompletionResult` at this call's γ (once per γ)."""
        gamma = self.settings.vae.gamma
        key = ("model", gamma)
        if key not in self.cache:
            import dataclasses

            from SkullVAELib.vae.completion import complete

            defect = self.defect if gamma != 0 else self.settings.defect
            cfg = dataclasses.replace(self.settings.vae, defect=defect)
            result = complete(
                self.skull,
                self.folder.vae(),
                cfg,
                device=self.settings.device,
                progress=self.progress,
                precision=self.settings.precision,
            )
            for name, seconds in result.timings.items():
                self.timings[f"model_{name}"] = self.timings.get(f"model_{name}", 0.0) + seconds
            self.cache[key] = result
        return self.cache[key]
