"""``mgr submit extract|train|label ARGS... --address URL``: run a job on a Ray cluster.

The arguments after the kind are exactly those of the local command (``mgr extract
--help`` etc.); they are checked here with that command's parser before anything is
sent, then run on the cluster as ``python jobs/<kind>.py ARGS`` with the project as the
job's working_dir. Relative local paths are made absolute (a job's working directory
is a temporary copy of the project, so a relative output would be lost with it).
"""

from __future__ import annotations

import argparse
import os
import sys

from mgr.errors import ConfigError, JobError

__all__ = ["register", "run", "split_submit_options", "job_arguments"]

#: options whose value is a local path (made absolute) besides the positionals, per kind
PATH_OPTIONS = {"label": {"--model"}, "reproduce": {"--data", "--tracks"}, "train": {"--split-manifest"}}

EPILOG = """\
examples:
  mgr submit extract s3://bucket/gtzan s3://bucket/features --labels folder --address http://HEAD:8265
  mgr submit train s3://bucket/features s3://bucket/models/cnn --model cnn --workers 2 --gpu --wait
  RAY_ADDRESS=http://HEAD:8265 mgr submit label s3://bucket/catalog s3://bucket/labels --model s3://bucket/models/cnn

The head's dashboard address comes from --address or RAY_ADDRESS. When the head uses
token authentication, the token is read as Ray reads it (RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and only sent in a request header.
"""


def _add_submit_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument(
        "--address",
        default=default(None),
        help="the head's dashboard URL, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)",
    )
    parser.add_argument(
        "--wait", action="store_true", default=default(False),
        help="follow the job's logs and exit with its result (0 when it succeeded)",
    )
    parser.add_argument(
        "--submission-id", default=default(None),
        help="the job's id (default: one chosen by Ray); a re-used id is refused",
    )
    parser.add_argument(
        "--pip", action=argparse.BooleanOptionalAction, default=default(True),
        help="install mgr's dependencies that the stock rayproject/ray image lacks (torch, librosa, ...) "
        "in the job's runtime_env; --no-pip on an image built from cluster/Dockerfile (default: --pip)",
    )


def register(subparsers) -> None:
    from mgr.remote.runtime_env import KINDS

    p = subparsers.add_parser(
        "submit",
        help="run extract/train/label as a Ray job on a cluster",
        description="Submit `mgr extract|train|label ARGS` to a Ray cluster as a Ray job "
        "(python jobs/<kind>.py ARGS), tagged with its kind, input and output.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=KINDS, help="which job to run")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="the arguments of `mgr KIND` (see mgr KIND --help)")
    _add_submit_options(p)
    p.set_defaults(func=run)


def split_submit_options(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Take submit's own options out of the job's argument list.

    Returns
    -------
    (Namespace, list of str)
        The submit options found (only those given) and the remaining arguments, in order.
    """
    inner = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_submit_options(inner, suppress=True)
    found, rest = inner.parse_known_args(argv)
    return found, rest


def _is_uri(value: str) -> bool:
    return "://" in value


def _absolute(value: str) -> str:
    if not value or _is_uri(value) or os.path.isabs(value):
        return value
    return os.path.abspath(value)


def _job_path(option: str, value: str) -> str:
    """A path option's value in the job: a registry name given to ``--model`` travels with the
    job (:func:`mgr.commands.models.job_model`); a local path is made absolute."""
    from mgr.commands.models import job_model

    shipped = job_model(value) if option == "--model" else None
    return _absolute(value) if shipped is None else shipped


def job_arguments(kind: str, rest: list[str]) -> tuple[list[str], argparse.Namespace, list[str]]:
    """Check ``rest`` with ``mgr <kind>``'s own parser; return the job's argv.

    Returns
    -------
    (list of str, Namespace, list of str)
        The arguments for ``jobs/<kind>.py`` (relative local paths made absolute), the
        parsed namespace, and the values of the command's positional arguments in order
        (input first, output second).

    Raises
    ------
    ConfigError
        When ``mgr <kind>`` is not available in this mgr.
    """
    from mgr.commands import build_parser

    parser = build_parser(kind)
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None or kind not in sub.choices:
        raise ConfigError(f"`mgr {kind}` is not available in this mgr installation; it cannot be submitted either")
    kind_parser = sub.choices[kind]
    kind_parser.prog = f"mgr submit {kind}"
    ns = kind_parser.parse_args(rest)  # a bad option: argparse's usage line and exit 2
    # positionals with fixed choices (reproduce's gtzan|fma) are names, not paths
    positional = [a for a in kind_parser._actions if not a.option_strings and a.dest != "help" and not a.choices]
    values = []
    for action in positional:
        value = getattr(ns, action.dest, None)
        values.extend(value if isinstance(value, list) else [value])
    values = [str(v) for v in values if v is not None]

    out = []
    path_options = PATH_OPTIONS.get(kind, set())
    relative = {v for v in values if not _is_uri(v) and not os.path.isabs(v)}
    expect_path = False
    for token in rest:
        if expect_path:
            out.append(_job_path(out[-1], token))
            expect_path = False
            continue
        name, eq, value = token.partition("=")
        if token in path_options:
            expect_path = True
            out.append(token)
        elif eq and name in path_options:
            out.append(f"{name}={_job_path(name, value)}")
        elif token.startswith(("manifest:", "fma:")):
            prefix, _, path = token.partition(":")
            out.append(f"{prefix}:{_absolute(path)}")
        elif token in relative and not token.startswith("-"):
            out.append(_absolute(token))
        else:
            out.append(token)
    values = [_absolute(v) for v in values]
    return out, ns, values


def run(args: argparse.Namespace) -> int:
    from mgr.remote.jobs_client import JobsClient

    found, rest = split_submit_options(list(args.args or []))
    opts = {k: getattr(args, k) for k in ("address", "wait", "submission_id", "pip")}
    opts.update(vars(found))
    if "-h" in rest or "--help" in rest:
        from mgr.commands import build_parser

        print(f"mgr submit {args.kind} [--address URL] [--wait] [--submission-id ID] [--pip|--no-pip] ARGS")
        print(f"where ARGS are those of `mgr {args.kind}`:\n")
        build_parser(args.kind).parse_args([args.kind, "--help"])  # prints and exits 0
    job_args, ns, values = job_arguments(args.kind, rest)
    if args.kind == "reproduce" and len(values) == 1:
        values = [_absolute(ns.data), values[0]]  # reproduce's input is --data DIR
    if len(values) < 2:
        raise ConfigError(f"mgr submit {args.kind}: give the input and output as for `mgr {args.kind}`")
    client = JobsClient(opts["address"])
    sid = client.submit(
        args.kind,
        job_args,
        input=values[0],
        output=values[1],
        pip=opts["pip"],
        endpoint_url=getattr(ns, "endpoint_url", None),
        submission_id=opts["submission_id"],
    )
    print(f"submitted {args.kind} job {sid} to {client.address}", flush=True)
    if not opts["wait"]:
        print(f"  follow it: mgr jobs logs {sid} --follow --address {client.address}", flush=True)
        return 0
    try:
        summary = client.follow(sid)
    except KeyboardInterrupt:
        print(
            f"\nmgr submit: stopped following; job {sid} keeps running "
            f"(mgr jobs stop {sid} --address {client.address} stops it)",
            file=sys.stderr,
        )
        return 130
    if summary.status == "SUCCEEDED":
        print(f"job {sid} SUCCEEDED", flush=True)
        return 0
    raise JobError(f"job {sid} {summary.status}: {client.failure_reason(sid, summary)}")
