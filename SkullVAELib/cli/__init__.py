"""The `skullvae` command line: argparse verbs → library calls → exit codes.

Each verb lives in its own module exposing ``register(subparsers)``, which adds a
sub-parser whose ``func(args) -> int`` does the work. Errors a user can fix
(:class:`SkullVAEError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import threading

from SkullVAELib import __version__
from SkullVAELib.core.errors import SkullVAEError
from SkullVAELib.core.progress import close_all_bars

# Verb name -> (module in SkullVAELib/cli/, one-line help). Only the module of the verb being
# run is imported, so `skullvae complete` does not pay for the imports of every other verb.
VERBS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run the whole pipeline on phantoms (CPU; it prints its time estimate first)"),
    "phantoms": ("phantoms", "write a cohort of procedural skull phantoms (a data set)"),
    "make-defects": ("make_defects", "cut cranial or facial defects out of complete skulls"),
    "cache": ("cache", "precompute the model-grid volumes of a data set (cached on disk)"),
    "train": ("train", "train the β-VAE (stage 1) and the decoupled decoder (stage 2)"),
    "fit-completion": ("fit_completion", "fit class centroids and DEV vectors into a model bundle"),
    "build-atlas": ("build_atlas", "write complete training skulls as an atlas set (facial implants)"),
    "build-shapes": ("build_shapes", "write complete training skulls' ray maps as the rim fit's shape cue"),
    "train-refiner": ("train_refiner", "train the learned facial refiner (a 3D U-Net on a 1 mm face crop)"),
    "train-residual": ("train_residual", "train the learned cranial residual (a 3D U-Net correcting the rim fit)"),
    "complete": ("complete", "complete defective skulls: the patient's bone + the implant"),
    "worker": ("worker", "complete skull after skull from JSON requests on stdin (for hosts like Slicer)"),
    "evaluate": ("evaluate", "evaluate a model on held-out cases (Table 1, implant metrics, figures)"),
    "import-reference": ("import_reference", "convert the authors' published weights into a bundle"),
    "models": ("models", "list, download and install pretrained models (registry + user cache)"),
}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``skullvae VERB: error: ...``, exit 2), like
    every other user error, instead of the usage dump; ``--help`` still prints the full usage."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        close_all_bars()
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the verb named in ``argv`` (if any) gets its full sub-parser."""
    chosen = next((a for a in (argv or []) if a in VERBS), None)
    parser = OneLineParser(
        prog="skullvae",
        description="Skull reconstruction and shape completion with an aggregated β-VAE.",
    )
    parser.add_argument("--version", action="version", version=f"skullvae {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name, (module_name, help_text) in VERBS.items():
        if name == chosen:
            importlib.import_module(f"SkullVAELib.cli.{module_name}").register(sub)
            if name != "models":  # every verb that reads volumes or models
                _add_limit_args(sub.choices[name])
        else:
            sub.add_parser(name, help=help_text)
    return parser


LIMIT_ENV = {"max_voxels": "SKULLVAE_MAX_VOXELS", "max_memory_gb": "SKULLVAE_MAX_MEMORY_GB"}  # SkullVAELib.core.limits


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _add_limit_args(parser: argparse.ArgumentParser) -> None:
    """``--max-voxels`` / ``--max-memory-gb``: the resource limits of ``SkullVAELib.core.limits``, handed
    to it (and to child processes) through its environment variables."""
    group = parser.add_argument_group("resource limits (checked from headers and configs before reading)")
    group.add_argument(
        "--max-voxels",
        type=_positive_number,
        default=None,
        metavar="N",
        help=f"largest volume accepted, in voxels (default 1024³ = 1073741824, or ${LIMIT_ENV['max_voxels']})",
    )
    group.add_argument(
        "--max-memory-gb",
        type=_positive_number,
        default=None,
        metavar="GB",
        help=(
            "largest estimated memory of one volume, model, or model-grid volume of a training cache (the cache as a "
            f"whole is not limited) (default 4, or ${LIMIT_ENV['max_memory_gb']})"
        ),
    )


_OUT_OF_MEMORY_HINT = (
    "out of memory; lower --max-memory-gb so that oversized inputs are refused before they are read, "
    "raise the memory limit (ulimit -v), or use a machine with more memory"
)
# What C++ libraries (ITK, torch, VTK) and the dynamic loader say when memory runs out or a write fails.
_MEMORY_WORDS = ("failed to map segment", "cannot allocate memory", "can't allocate memory", "failed to allocate",
                 "bad_alloc", "out of memory")  # fmt: skip
_WRITE_WORDS = ("error writing", "couldn't write", "file write failed", "failed to write", "no space left",
                "file too large", "unexpected pos", "disk quota")  # fmt: skip
_RESOURCE_ERRNOS = {errno.ENOMEM: "memory", errno.ENOSPC: "write", errno.EFBIG: "write", errno.EDQUOT: "write"}


def native_failure(exc: BaseException) -> str | None:
    """One line for an ImportError, RuntimeError or OSError that means "out of memory" (a tight
    ``ulimit -v``: a library cannot even be mapped) or "the write failed" (disk full, ``ulimit -f``)
    as C++ libraries report them; None for anything else (a bug: its traceback is kept)."""
    text = str(exc).lower()
    kind = _RESOURCE_ERRNOS.get(getattr(exc, "errno", None) or 0) if isinstance(exc, OSError) else None
    if kind is None and any(word in text for word in _MEMORY_WORDS):
        kind = "memory"
    if kind is None and isinstance(exc, RuntimeError) and any(word in text for word in _WRITE_WORDS):
        kind = "write"
    if kind == "memory":
        return _OUT_OF_MEMORY_HINT
    if kind == "write":
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = (lines[-1] if lines else type(exc).__name__)[:160]
        return f"cannot write: the disk is full or a file-size limit (ulimit -f) was reached ({detail})"
    return None


def _sigterm_as_ctrl_c(signum, frame) -> None:
    """SIGTERM (``kill``, SLURM, ``docker stop``) ends a verb as Ctrl-C does: temporaries removed,
    exit 130. Training installs its own handler (checkpoint first, SkullVAELib.training.checkpoint)."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    owns_process = argv is None  # the console script or ``python -m``, not a caller's own process
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    args.owns_process = owns_process
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c) if on_main_thread else None
    try:
        return _run(args)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    """Run the chosen verb; user errors become one line and exit 2, interruptions exit 130.

    ``--max-voxels`` / ``--max-memory-gb`` hold for this run only (its child processes included): the
    environment is restored afterwards, so a later call in the same process (``skullvae worker``'s next
    request) is not limited by them."""
    saved = {env: os.environ.get(env) for env in LIMIT_ENV.values()}
    try:
        for key, env in LIMIT_ENV.items():
            if getattr(args, key, None) is not None:
                os.environ[env] = repr(getattr(args, key))
        return _run_verb(args)
    finally:
        for env, value in saved.items():
            if value is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = value


def _run_verb(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except SkullVAEError as exc:
        close_all_bars()  # the error starts on its own line, not after a progress bar
        print(f"skullvae {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        close_all_bars()
        print(f"skullvae {args.verb}: error: {_OUT_OF_MEMORY_HINT}", file=sys.stderr)
        return 2
    except (ImportError, RuntimeError, OSError) as exc:
        message = native_failure(exc)
        if message is None:
            raise
        close_all_bars()
        print(f"skullvae {args.verb}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        close_all_bars()
        print(f"skullvae {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
