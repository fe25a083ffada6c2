"""The implant-source protocol and its registry (Slicer SegmentStatistics' plugin pattern).

A source turns a defective skull into an implant proposal. It says first whether it applies to
the case (and why not), then builds the proposal; the :class:`~SkullVAELib.pipeline.completer.Completer`
tries its sources in order, post-processes and checks the proposal once (:mod:`..postprocess`,
:mod:`..check`) and keeps the first usable one. A new source is one file with a class like
:class:`ImplantSource` and one ``register_source`` line in :mod:`SkullVAELib.implant.sources`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from SkullVAELib.core.errors import SkullVAEError

# The context (``SkullVAELib.pipeline.context.CompletionContext``: skull, defect, settings, the
# model folder's parts, shared work) and the settings are the pipeline's; the sources only use them,
# so they are typed loosely here and the implant package never imports the pipeline.
CompletionContext = Any
CompletionSettings = Any


@dataclass
class Proposal:
    """What a source proposes for one skull.

    Attributes:
        implant: bool (I, J, K) on the skull's grid (the Completer removes the patient's bone and
            post-processes it unless ``postprocessed``).
        variant: a detail of how it was made ("mirror" or "shapes": the rim fit's cue, :attr:`RimFitResult.cue`), or "".
        expected_mm3: the volume the defect needs by the source's own estimate (for the check), or None.
        holes: the rim fit's holes (``rimfit.Hole``), for the volume check; [] otherwise.
        messages: notes for the user.
        timings: seconds per step.
        postprocessed: True when the source already applied the shared post-processing.
        self_check: the rim fit tried on the skull's intact vault (``selfcheck.SelfCheck``), or None.
    """

    implant: np.ndarray
    variant: str = ""
    expected_mm3: float | None = None
    holes: list = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    postprocessed: bool = False
    self_check: Any = None


class ImplantSource(Protocol):
    """One way of making an implant. ``name`` is the one word used in the CLI, Slicer, the
    evaluation's method names, the result JSON and the docs."""

    name: ClassVar[str]
    uses_gamma: ClassVar[bool]  # True when γ changes the proposal (the model's latent arithmetic)

    def __init__(self, settings: CompletionSettings) -> None: ...

    def applies(self, context: CompletionContext) -> str | None:
        """None when the source can serve this case, else the reason it cannot (one sentence)."""

    def propose(self, context: CompletionContext) -> Proposal:
        """The implant proposal for ``context.skull`` (its mask is never modified)."""


_REGISTRY: dict[str, Callable[..., ImplantSource]] = {}


def register_source(cls: type) -> type:
    """Register an implant source class under its ``name`` (usable as a decorator)."""
    name = getattr(cls, "name", None)
    if not name or not isinstance(name, str):
        raise TypeError(f"{cls!r} has no source name")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"an implant source named {name!r} is registered already")
    _REGISTRY[name] = cls
    return cls


def source_names() -> tuple[str, ...]:
    """The registered source names, in registration order."""
    return tuple(_REGISTRY)


def source_class(name: str) -> Callable[..., ImplantSource]:
    """The class registered as ``name`` (SkullVAEError listing the known names otherwise)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SkullVAEError(f"unknown implant source {name!r}; choose from {', '.join(_REGISTRY)}") from None
