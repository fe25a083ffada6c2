"""Deprecated alias (kept for one release): previews live in :mod:`SkullVAELib.figures`.

``save_mip_png`` is :func:`SkullVAELib.figures.save_mip_png`; ``xray_projection`` is
:func:`SkullVAELib.views.xray_projection`.
"""

from __future__ import annotations

from SkullVAELib.figures import save_mip_png
from SkullVAELib.views import xray_projection

__all__ = ["save_mip_png", "xray_projection"]
