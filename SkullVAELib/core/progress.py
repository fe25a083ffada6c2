"""Progress reporting shared by the library, the CLI and the Slicer module.

Library functions take an optional ``progress`` callback ``(stage, fraction, message)``
with ``fraction`` in [0, 1] for that stage. The CLI turns it into tqdm bars or, with
``--progress json``, into one JSON object per line on stdout (read by the Slicer module):
``{"stage": "encode", "fraction": 0.5, "message": "..."}``.
"""

from __future__ import annotations

import json
import sys
import time
import weakref
from typing import Protocol

_LIVE_BARS: weakref.WeakSet = weakref.WeakSet()  # TqdmProgress objects with an open bar


class ProgressCallback(Protocol):
    def __call__(self, stage: str, fraction: float, message: str = "") -> None: ...


def no_progress(stage: str, fraction: float, message: str = "") -> None:
    """A callback that ignores everything."""


class JsonLinesProgress:
    """Writes one JSON object per call to ``stream`` (stdout by default), flushed at once."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        record = {"stage": stage, "fraction": round(float(fraction), 4), "message": message}
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()


class TqdmProgress:
    """One tqdm bar per stage on stderr (a new stage closes the previous bar), with an ETA.

    The bar is redrawn at most every ``mininterval`` seconds (a training calls back once
    per batch). When stderr is not a terminal (a log file, a pipe) there is no bar: one
    plain line per stage start, at most one per ``log_interval`` seconds, and one at 100 %. The same
    lines where tqdm is not installed (3D Slicer's Python: `PythonSlicer -m SkullVAELib` in a terminal).
    """

    def __init__(self, disable: bool = False, mininterval: float = 0.5, log_interval: float = 60.0, stream=None):
        self.disable = disable
        self.mininterval = mininterval
        self.log_interval = log_interval
        self.stream = stream
        self._bar = None
        self._stage: str | None = None
        self._last = 0.0
        self._started = 0.0

    def _out(self):
        return self.stream or sys.stderr

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        if self.disable:
            return
        fraction = min(max(float(fraction), 0.0), 1.0)
        now = time.monotonic()
        new_stage = stage != self._stage
        if new_stage:
            self.close()
            self._stage, self._started, self._last = stage, now, 0.0
        if not getattr(self._out(), "isatty", lambda: False)() or not _tqdm_installed():
            if new_stage or fraction >= 1.0 or now - self._last >= self.log_interval:
                self._last = now
                eta = _eta(now - self._started, fraction)
                print(f"{stage}: {100 * fraction:3.0f}%{eta} {message}".rstrip(), file=self._out(), flush=True)
            return
        from tqdm.auto import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=1000,
                desc=stage,
                leave=False,
                file=self._out(),
                mininterval=self.mininterval,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}",
            )
            _LIVE_BARS.add(self)
        bar = self._bar
        bar.n = int(round(1000 * fraction))
        if message:
            bar.set_postfix_str(message, refresh=False)
        if new_stage or fraction >= 1.0 or now - self._last >= self.mininterval:
            self._last = now
            bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        _LIVE_BARS.discard(self)


def _tqdm_installed() -> bool:
    """Whether tqdm can be imported (SkullVAE does not install it into 3D Slicer: the module reads JSON lines)."""
    import importlib.util

    try:
        return importlib.util.find_spec("tqdm") is not None
    except (ImportError, ValueError):  # a None entry in sys.modules (blocked) or a broken spec
        return False


def close_all_bars() -> None:
    """Close every open progress bar (before printing an error, so it starts on its own line)."""
    for progress in list(_LIVE_BARS):
        progress.close()


def _eta(elapsed: float, fraction: float) -> str:
    """ " (ETA 3 min)" from the elapsed time and the fraction done; "" when unknown."""
    if fraction <= 0.02 or fraction >= 1.0 or elapsed < 2:
        return ""
    left = elapsed * (1 - fraction) / fraction
    return f" (ETA {left / 60:.0f} min)" if left >= 90 else f" (ETA {left:.0f} s)"
