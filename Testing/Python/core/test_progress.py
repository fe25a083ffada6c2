"""Progress output stays small: a training's thousands of callbacks are not thousands of redraws."""

from __future__ import annotations

import io

from SkullVAELib.core.progress import TqdmProgress, close_all_bars


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_file_gets_a_few_plain_lines():
    stream = io.StringIO()
    progress = TqdmProgress(stream=stream)
    for i in range(5001):
        progress("train stage 1", i / 5000, f"epoch {i}")
    progress("train stage 2", 0.0)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("train stage 1:   0%") and "\r" not in stream.getvalue()
    assert any(line.startswith("train stage 1: 100%") for line in lines)
    assert lines[-1].startswith("train stage 2:") and len(lines) <= 5


def test_terminal_bar_is_throttled_and_closed_before_errors():
    stream = Terminal()
    progress = TqdmProgress(stream=stream, mininterval=60)
    for i in range(5000):
        progress("train stage 1", i / 5000, "x")
    assert len(stream.getvalue()) < 2000  # one redraw, not 5000
    close_all_bars()
    assert progress._bar is None


def test_disabled_writes_nothing():
    stream = Terminal()
    progress = TqdmProgress(disable=True, stream=stream)
    progress("a", 0.5)
    assert stream.getvalue() == ""


def test_a_terminal_without_tqdm_gets_plain_lines(monkeypatch):
    """Inside 3D Slicer tqdm is not installed (the module reads JSON lines); `PythonSlicer -m SkullVAELib
    complete` in a terminal then prints plain lines instead of failing on the import."""
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed: importing it raises ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    stream = Terminal()
    progress = TqdmProgress(stream=stream)
    progress("rimfit", 0.0, "fitting")
    progress("rimfit", 1.0)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("rimfit:   0%") and lines[-1].startswith("rimfit: 100%")
