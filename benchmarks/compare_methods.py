"""Per case, does one implant method beat another? (issue 24: "keep it only if it beats the rim
fit on validation, per case, not just on the mean").

Reads the ``implants.csv`` of ``skullvae evaluate --implants A,B`` (one or more files, rows merged)
and prints, per (case, defect, seed), both methods' DSC and HD95 and the difference, then per
defect type the means, the worst case of each, and how many cases got better or worse by more
than ``--tie`` DSC::

    .venv/bin/python benchmarks/compare_methods.py /tmp/val/implants.csv --base rimfit --new residual
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict

import numpy as np


def load(paths: list[str]) -> dict[tuple, dict[str, dict]]:
    """{(case, defect, seed): {method: row}} from ``implants.csv`` files."""
    cases: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                cases[(row["case_id"], row["defect"], row["seed"])][row["method"]] = row
    return cases


def compare(cases: dict, base: str, new: str, tie: float) -> str:
    """The per-case table and the summary per defect type, as Markdown."""
    lines = [f"| case | defect | seed | {base} DSC | {new} DSC | Δ DSC | {base} HD95 | {new} HD95 |", "|---" * 8 + "|"]
    by_defect: dict[str, list] = defaultdict(list)
    for key in sorted(cases):
        rows = cases[key]
        if base not in rows or new not in rows:
            continue
        a, b = (float(rows[m]["dsc"]) for m in (base, new))
        ha, hb = (float(rows[m]["hd95"]) for m in (base, new))
        by_defect[key[1]].append((a, b, ha, hb))
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2] or '–'} | {a:.3f} | {b:.3f} | {b - a:+.3f} | {ha:.2f} | {hb:.2f} |"
        )
    lines.append("")
    for defect, values in sorted(by_defect.items()):
        v = np.array(values)
        better, worse = int(np.sum(v[:, 1] - v[:, 0] > tie)), int(np.sum(v[:, 0] - v[:, 1] > tie))
        lines.append(
            f"- {defect} (n = {len(v)}): DSC {base} {v[:, 0].mean():.3f} (min {v[:, 0].min():.3f}) → {new} "
            f"{v[:, 1].mean():.3f} (min {v[:, 1].min():.3f}); HD95 {v[:, 2].mean():.2f} → {v[:, 3].mean():.2f} mm; "
            f"better {better}, worse {worse} (|Δ| > {tie})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", help="implants.csv of `skullvae evaluate --implants`")
    parser.add_argument("--base", default="rimfit")
    parser.add_argument("--new", default="residual")
    parser.add_argument("--tie", type=float, default=0.005, help="a DSC change within this is a tie")
    args = parser.parse_args()
    print(compare(load(args.csv), args.base, args.new, args.tie))


if __name__ == "__main__":
    main()
