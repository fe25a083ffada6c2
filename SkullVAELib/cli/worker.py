"""`skullvae worker`: a long-lived `complete` for a host that completes skull after skull (the Slicer
module): models and imports are paid once, not per Apply.

Protocol: one request per stdin line, a JSON list of `skullvae complete` arguments (without the
verb). Each request prints what `skullvae complete` prints (with ``--progress json``: one JSON object
per line, the last ``{"stage": "done", ..., "result": ...}``; an error is one line on stderr) and then
``{"stage": "exit", "code": N}`` on stdout (0 done, 2 a user error, 1 an internal error, 130
interrupted); a request that fails, however, never ends the worker. The same
settings reuse the same loaded Completer. End of input ends the worker with exit code 0; SIGTERM or
Ctrl-C ends it with 130.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "worker",
        help="complete skull after skull from JSON requests on stdin (models stay loaded)",
        description="Read one JSON list of `skullvae complete` arguments per line from stdin and run each in "
        'this process, so loaded models and imports are reused; after each, print {"stage": "exit", "code": N}.',
    )
    p.set_defaults(func=run)


def _request(line: str) -> list[str] | None:
    """The argument list of one request line, or None (a one-line error on stderr) when it is not one."""
    try:
        argv = json.loads(line)
    except json.JSONDecodeError as exc:
        print(f"skullvae worker: error: a request is a JSON list of arguments ({exc.msg})", file=sys.stderr)
        return None
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        print("skullvae worker: error: a request is a JSON list of strings", file=sys.stderr)
        return None
    return argv


def _complete(main, argv: list[str]) -> int:
    """Run one request; whatever it raises ends that request (a one-line error on stderr), not the worker:
    exit code 2 for an input error, 1 for an internal one, as the CLI gives them."""
    from SkullVAELib.core.errors import SkullVAEError

    try:
        return main(["complete", *argv])
    except SystemExit as exc:  # argparse's one-line usage errors
        return exc.code if isinstance(exc.code, int) else 2
    except Exception as exc:  # noqa: BLE001 - a bug in one request must not end the worker
        from SkullVAELib.core.progress import close_all_bars

        close_all_bars()
        kind = "" if isinstance(exc, SkullVAEError) else f"internal error ({type(exc).__name__}): "
        detail = " ".join(str(exc).split()) or type(exc).__name__
        print(f"skullvae complete: error: {kind}{detail}", file=sys.stderr)
        return 2 if isinstance(exc, SkullVAEError) else 1


def run(args: argparse.Namespace) -> int:
    from SkullVAELib.cli import main  # the dispatcher: a request runs the `complete` verb as the CLI does

    for line in sys.stdin:
        if not line.strip():
            continue
        argv = _request(line)
        if argv is None:
            code = 2
        else:
            code = _complete(main, argv)
        sys.stderr.flush()
        sys.stdout.write(json.dumps({"stage": "exit", "code": code}) + "\n")
        sys.stdout.flush()
        if code == 130:
            return 130
    return 0
