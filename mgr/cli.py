"""The ``mgr`` console script: parse the command line, call one library function.

Each subcommand lives in ``mgr/commands/<name>.py`` with ``register(subparsers)`` (adds
its parser and sets ``func``) and is imported lazily, so ``mgr --help`` stays fast.
A user mistake (any :class:`~mgr.errors.MgrError`) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mgr import __version__
from mgr.errors import MgrError

__all__ = ["COMMANDS", "build_parser", "main"]

#: subcommand → module under ``mgr.commands`` that registers it
COMMANDS: dict[str, str] = {
    "extract": "extract",
    "train": "train",
    "evaluate": "evaluate",
    "label": "label",
    "import-keras": "import_keras",
    "submit": "submit",
    "jobs": "jobs",
    "demo": "demo",
    "reproduce": "reproduce",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mgr",
        description="Music genre recognition as distributed batch jobs on Ray: "
        "extract log-mel features, train the paper's models, label catalogs.",
    )
    parser.add_argument("--version", action="version", version=f"mgr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            mod = importlib.import_module(f"mgr.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"mgr.commands.{module}":
                raise
            continue  # a command not built yet in this checkout
        mod.register(sub)
    return parser


def _user_error(exc: BaseException) -> MgrError | None:
    """The MgrError behind ``exc`` (Ray wraps task errors; follow causes)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MgrError):
            return exc
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            exc = cause
            continue
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "s3_retries", None) is not None:
        if args.s3_retries < 1:
            print(f"mgr {args.command}: error: --s3-retries must be at least 1", file=sys.stderr)
            return 2
        os.environ["MGR_S3_RETRIES"] = str(args.s3_retries)  # reaches workers via mgr.runtime
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("mgr: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - user errors become one line
        err = _user_error(exc)
        if err is None or os.environ.get("MGR_DEBUG"):
            raise
        print(f"mgr {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
