"""Deprecated alias (one release): the log is :mod:`SkullVAELib.training_log`, the drawing of
Fig. 3 is :func:`SkullVAELib.figures.plot_curves`. Import from those modules."""

from __future__ import annotations

from SkullVAELib.figures import plot_curves
from SkullVAELib.training_log import COLUMNS, CURVES_NAME, LOG_NAME, curve_logs, read_log, write_log

__all__ = ["COLUMNS", "CURVES_NAME", "LOG_NAME", "curve_logs", "plot_curves", "read_log", "write_log"]
