"""The product pipeline: one :class:`~SkullVAELib.pipeline.completer.Completer`, configured once
from one :class:`~SkullVAELib.pipeline.settings.CompletionSettings`, completes defective skulls.

``settings`` (what to do) → ``completer`` (loads what the sources need once, then completes skull
after skull) → ``context`` (one skull's shared work: defect, mirror plane, the model's completion)
→ the implant sources of :mod:`SkullVAELib.implant.sources`.
"""
