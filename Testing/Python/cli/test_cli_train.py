"""`skullvae train`'s precision: the learned sources' vocabulary, the older flags still understood."""

from __future__ import annotations

import pytest

from SkullVAELib.cli import build_parser
from SkullVAELib.cli.train import train_configs


@pytest.mark.parametrize(
    ("flags", "precision"),
    [([], "auto"), (["--precision", "fp32"], "fp32"), (["--no-amp"], "fp32"), (["--cpu-bf16"], "bf16")],
)
def test_the_precision_flag_and_its_older_spellings(flags, precision, tmp_path):
    argv = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--stage", "all", *flags]
    configs = train_configs(build_parser(argv).parse_args(argv))
    assert [c.precision for c in configs.values()] == [precision, precision]


def test_an_unknown_precision_is_refused_in_one_line(tmp_path, capsys):
    from SkullVAELib.cli import main

    with pytest.raises(SystemExit) as stop:  # argparse's own refusal, one line (cli.OneLineParser)
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), "--precision", "fp16"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--precision" in err and len(err.splitlines()) == 1
