"""Implant sources, registered once (Slicer SegmentStatistics' plugin pattern).

A new source is one file here with a class that has ``name``, ``uses_gamma``, ``applies`` and
``propose`` (:class:`~SkullVAELib.implant.sources.base.ImplantSource`) and one line below.
Source modules import their heavy dependencies (torch, MONAI, SimpleITK) only when they run.
"""

from SkullVAELib.implant.sources.atlas import AtlasSource
from SkullVAELib.implant.sources.base import ImplantSource, Proposal, register_source, source_class, source_names
from SkullVAELib.implant.sources.learned import LearnedSource
from SkullVAELib.implant.sources.model import ModelSource
from SkullVAELib.implant.sources.residual import ResidualSource
from SkullVAELib.implant.sources.rimfit import RimFitSource

register_source(ResidualSource)
register_source(RimFitSource)
register_source(LearnedSource)
register_source(AtlasSource)
register_source(ModelSource)

__all__ = ["ImplantSource", "Proposal", "register_source", "source_class", "source_names"]
