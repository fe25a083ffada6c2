"""The SkullFix pairs a rim-fit benchmark runs on: its ``--data/--ids/--defects/--seeds`` and the cases they name.

Shared by ``rimfit_cases.py``, ``rimfit_poses.py``, ``rimfit_variants.py`` and ``rimfit_error_budget.py``,
which differ only in their default defects and seeds.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from _report import SKULLFIX


def add_case_arguments(parser: argparse.ArgumentParser, defects: str = "cranial,vault", seeds: str = "0,1") -> None:
    """``--data``, ``--ids`` (validation 056-063 by default), ``--defects`` and ``--seeds`` on ``parser``."""
    parser.add_argument("--data", type=Path, default=SKULLFIX, help="the SkullFix folder")
    parser.add_argument("--ids", default="056-063", help="case ids (validation by default)")
    parser.add_argument("--defects", default=defects, help="cranial, vault, irregular (comma-separated)")
    parser.add_argument("--seeds", default=seeds, help="defect seeds of vault and irregular (comma-separated)")


def selected_cases(args: argparse.Namespace) -> Iterator:
    """The ``DefectCase`` pairs that ``args`` name, one at a time: of SkullFix's layout
    (:func:`SkullVAELib.evaluation.implants.defect_cases`), or, for a folder of defective skulls only such as
    ``skullfix_test``, new vault and irregular defects cut away from each skull's own hole
    (:func:`SkullVAELib.evaluation.extra_cases.extra_defect_cases`)."""
    from SkullVAELib.data.case_ids import parse_id_spec
    from SkullVAELib.evaluation.extra_cases import scored_cases

    seeds = [int(s) for s in args.seeds.split(",")]
    return scored_cases(args.data, parse_id_spec(args.ids), args.defects.split(","), seeds)
