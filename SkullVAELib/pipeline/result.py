"""What one completion returns: the completed skull, the implant, and how they were made."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from SkullVAELib.io.image import SkullImage


@dataclass
class Completion:
    """The result of :meth:`Completer.complete`; every image lies on the input's exact geometry.

    Attributes:
        completed: the completed skull, bool (I, J, K): the patient's bone ∪ the implant (or the
            model's raw decoded skull when the settings ask for it).
        implant: bool (I, J, K), disjoint from the patient's bone.
        source: the implant source that made it ("rimfit", "learned", "atlas", "model"), or "none".
        variant: a detail of the source ("mirror" or "shapes": the rim fit's cue, :attr:`RimFitResult.cue`), or "".
        defect: "cranial" or "facial"; defect_reason: how it was decided; confidence: the
            classifier's probability when the model decided, else None.
        gamma: the γ of this call; gamma_used: True when γ made the implant (the model source).
        skipped: source -> why it did not make the implant (did not apply, or proposed nothing).
        warnings: notes for the user (implant checks, sources' messages).
        timings: seconds per stage.
        uncertainty: float32 (I, J, K) bone frequency over the model's samples, or None.
        quality: the implant's agreement with the rim in [0, 1] (1 = seamless;
            :mod:`SkullVAELib.implant.quality`), None when not computed; quality_note: its explanation;
            quality_parts: its components and measures by name (mm, fractions: steps at the rim, coverage,
            ``reach_mm``), for programs that read the result rather than the note; review: True when the
            quality lies in the band where the user is asked to check the implant (``completer.review_note``).
        self_check: the rim fit tried on the skull's intact vault (``SelfCheck.summary()``: median DSC,
            places, lowest, highest), {} when not asked for; self_check_note: its one line.
    """

    completed: SkullImage
    implant: SkullImage
    source: str
    defect: str
    defect_reason: str
    gamma: float
    variant: str = ""
    confidence: float | None = None
    gamma_used: bool = False
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    uncertainty: np.ndarray | None = None
    quality: float | None = None
    quality_note: str = ""
    quality_parts: dict[str, dict[str, float]] = field(default_factory=dict)
    review: bool = False
    self_check: dict[str, float | None] = field(default_factory=dict)
    self_check_note: str = ""

    @property
    def implant_volume_mm3(self) -> float:
        return float(np.count_nonzero(self.implant.mask)) * self.implant.voxel_volume_mm3

    def record(self) -> dict:
        """JSON-able summary (the result file, ``--progress json``'s last line, the Slicer log)."""
        return {
            "defect": self.defect,
            "defect_reason": self.defect_reason,
            "confidence": None if self.confidence is None else round(float(self.confidence), 4),
            "gamma": self.gamma,
            "gamma_used": self.gamma_used,
            "implant_source": self.source,
            "implant_variant": self.variant,
            "implant_volume_mm3": round(self.implant_volume_mm3, 1),
            "implant_quality": None if self.quality is None else round(self.quality, 3),
            "implant_quality_note": self.quality_note,
            "implant_quality_parts": {
                part: {k: _rounded(v) for k, v in values.items()} for part, values in self.quality_parts.items()
            },
            "implant_review": self.review,
            "implant_self_check": {k: _rounded(v) for k, v in self.self_check.items()} or None,
            "implant_self_check_note": self.self_check_note,
            "skipped_sources": dict(self.skipped),
            "warnings": list(self.warnings),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def summary_line(self) -> str:
        """One line: "cranial defect, implant 12.3 cm³ (rimfit + mirror)"."""
        how = self.source + (f" + {self.variant}" if self.variant else "")
        return f"{self.defect} defect, implant {self.implant_volume_mm3 / 1000:.1f} cm³ ({how})"


def _rounded(value) -> float | int | None:
    """A number for JSON: 4 decimals, integers kept, NaN and None as None."""
    if value is None or not np.isfinite(value):
        return None
    return value if isinstance(value, int) else round(float(value), 4)
