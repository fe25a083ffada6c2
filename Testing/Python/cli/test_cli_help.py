"""Every verb's --help answers at once (no torch import) and reads as plain text; CLI messages name their flags."""

from __future__ import annotations

import subprocess
import sys

import pytest

from SkullVAELib.cli import build_parser, main


@pytest.mark.parametrize("verb", ["demo", "evaluate", "import-reference", "complete", "models", "train", "phantoms"])
def test_help_does_not_import_torch(verb):
    code = (
        f"import sys; from SkullVAELib.cli import build_parser; build_parser([{verb!r}]); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", f"`skullvae {verb} --help` imports torch"


@pytest.mark.parametrize("verb", ["make-defects", "demo", "models"])
def test_help_has_a_plain_description(verb):
    parser = build_parser([verb])
    sub = next(a for a in parser._actions if a.dest == "verb").choices[verb]
    text = sub.format_help()
    assert sub.description and "``" not in text


def test_demo_has_a_progress_option():
    parser = build_parser(["demo"])
    assert parser.parse_args(["demo", "--progress", "none"]).progress == "none"


def test_grid_error_names_the_flags(capsys, tmp_path):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--grid", "32,32,32"]) == 2
    err = capsys.readouterr().err
    assert "--preset test" in err and "--channels" in err and err.count("\n") == 1


def test_every_option_of_every_verb_has_help():
    from SkullVAELib.cli import VERBS

    missing = []
    for verb in VERBS:
        sub = next(a for a in build_parser([verb])._actions if a.dest == "verb").choices[verb]
        missing += [f"{verb} {a.option_strings[0]}" for a in sub._actions if a.option_strings and not a.help]
    assert not missing, missing
