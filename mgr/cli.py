"""The ``mgr`` console script: parse the command line, call one library function.

The parser is built by :func:`mgr.commands.build_parser`; each subcommand lives in ``mgr/commands/<name>.py`` with ``register(subparsers)`` (adds
its parser and sets ``func``) and is imported lazily, so ``mgr --help`` stays fast.
A user mistake (any :class:`~mgr.errors.MgrError`) prints one line and exits 2.
"""

from __future__ import annotations

import os
import sys

from mgr.commands import COMMANDS, build_parser
from mgr.errors import user_error

__all__ = ["COMMANDS", "build_parser", "main"]

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "verbose", False):
        os.environ["MGR_VERBOSE"] = "1"  # read by mgr.pipelines.runtime when it starts Ray
    if getattr(args, "s3_retries", None) is not None:
        if args.s3_retries < 1:
            print(f"mgr {args.command}: error: --s3-retries must be at least 1", file=sys.stderr)
            return 2
        os.environ["MGR_S3_RETRIES"] = str(args.s3_retries)  # reaches workers via mgr.pipelines.runtime
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("mgr: interrupted; re-run the same command to resume", file=sys.stderr)
        _say_where_ray_logs_are()
        return 130
    except Exception as exc:  # noqa: BLE001 - user errors become one line
        err = user_error(exc)
        if err is None or os.environ.get("MGR_DEBUG"):
            raise
        # one line: mgr's messages are (Ray Data appends its retry advice to a task's error)
        print(f"mgr {args.command}: error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        _say_where_ray_logs_are()
        return 2
    _say_where_ray_logs_are()
    return int(result or 0)


def _say_where_ray_logs_are() -> None:
    """One line (stderr) saying where Ray's own logs went, when this run started a quiet Ray."""
    runtime = sys.modules.get("mgr.pipelines.runtime")  # never imported (nor Ray) just for this line
    logs = runtime.session_logs() if runtime is not None else None
    if logs:
        print(f"mgr: Ray's own logs of this run: {logs} (mgr --verbose shows them on the console)",
              file=sys.stderr, flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
