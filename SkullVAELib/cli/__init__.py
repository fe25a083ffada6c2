"""The `skullvae` command line: argparse verbs → library calls → exit codes.

Each verb lives in its own module exposing ``register(subparsers)``, which adds a
sub-parser whose ``func(args) -> int`` does the work. Errors a user can fix
(:class:`SkullVAEError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from SkullVAELib import __version__
from SkullVAELib.errors import SkullVAEError

# Verb modules, in the order `skullvae --help` lists them. A module that is missing
# (not yet written) is skipped so the rest of the CLI keeps working.
VERB_MODULES = (
    "demo",
    "phantoms",
    "make_defects",
    "cache",
    "train",
    "fit_completion",
    "complete",
    "evaluate",
    "import_reference",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skullvae",
        description="Skull reconstruction and shape completion with an aggregated β-VAE.",
    )
    parser.add_argument("--version", action="version", version=f"skullvae {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(f"SkullVAELib.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"SkullVAELib.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SkullVAEError as exc:
        print(f"skullvae {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"skullvae {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
