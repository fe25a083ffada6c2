"""Progress reporting shared by the library, the CLI and the Slicer module.

Library functions take an optional ``progress`` callback ``(stage, fraction, message)``
with ``fraction`` in [0, 1] for that stage. The CLI turns it into tqdm bars or, with
``--progress json``, into one JSON object per line on stdout (read by the Slicer module):
``{"stage": "encode", "fraction": 0.5, "message": "..."}``.
"""

from __future__ import annotations

import json
import sys
from typing import Protocol


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
    """One tqdm bar per stage, on stderr; a new stage closes the previous bar."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self._bar = None
        self._stage: str | None = None

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        from tqdm.auto import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(
                total=1000,
                desc=stage,
                disable=self.disable,
                leave=False,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
            )
        bar = self._bar
        bar.n = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
