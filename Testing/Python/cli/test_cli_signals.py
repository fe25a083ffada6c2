"""Every verb, not only ``train``, ends on SIGTERM as on Ctrl-C: one line, exit 130."""

from __future__ import annotations

import argparse
import os
import signal
import time

from SkullVAELib import cli


def _parser_with_verb(func) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skullvae")
    sub = parser.add_subparsers(dest="verb")
    verb = sub.add_parser("complete")
    verb.set_defaults(func=func)
    return parser


def test_sigterm_during_a_verb_exits_130_like_ctrl_c(monkeypatch, capsys):
    def slow_verb(args) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        return 0

    monkeypatch.setattr(cli, "build_parser", lambda argv=None: _parser_with_verb(slow_verb))
    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    assert cli.main(["complete"]) == 130
    assert time.monotonic() - started < 4
    assert "skullvae complete: interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the test process gets its handler back
