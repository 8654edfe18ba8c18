"""One module per ``mgr`` subcommand: ``register(subparsers)`` and the function it calls."""

from __future__ import annotations

import argparse
import importlib

from mgr import __version__

__all__ = ["COMMANDS", "add_ray_options", "add_storage_options", "add_verbose_option", "build_parser"]

#: subcommand → module under ``mgr.commands`` that registers it
COMMANDS: dict[str, str] = {
    "extract": "extract",
    "train": "train",
    "evaluate": "evaluate",
    "label": "label",
    "import-keras": "import_keras",
    "models": "models",
    "submit": "submit",
    "jobs": "jobs",
    "demo": "demo",
    "reproduce": "reproduce",
    "report": "report",
    "calibrate": "calibrate",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mgr",
        description="Music genre recognition as distributed batch jobs on Ray: "
        "extract log-mel features, train the paper's models, label catalogs.",
    )
    parser.add_argument("--version", action="version", version=f"mgr {__version__}")
    add_verbose_option(parser, default=False)
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
    for command in sub.choices.values():  # `mgr COMMAND --verbose` as well as `mgr --verbose COMMAND`
        try:
            add_verbose_option(command)
        except argparse.ArgumentError:
            pass  # the command has a --verbose of its own
    return parser


def add_verbose_option(parser: argparse.ArgumentParser, *, default=argparse.SUPPRESS) -> None:
    """``--verbose``: show Ray's own console output (its logs stay in the session folder otherwise).

    A subcommand's flag defaults to ``SUPPRESS`` so that it never undoes ``mgr --verbose COMMAND``.
    """
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=default,
        help="also print Ray's own log lines and worker output (by default they stay in Ray's session "
        "folder, /tmp/ray/session_*/logs, and only mgr's lines are printed)",
    )


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (HOST:PORT, ray://HOST:10001 or auto); "
        "default: an embedded local Ray, or the cluster when run as a Ray job",
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded local Ray (default: all)")


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoint-url",
        default=None,
        help="S3-compatible endpoint for s3:// paths (default: $AWS_ENDPOINT_URL); "
        "credentials come from the usual AWS environment",
    )
    parser.add_argument(
        "--s3-retries",
        type=int,
        default=None,
        help="attempts per S3 request on throttling (503 SlowDown) and transient errors, with "
        "adaptive backoff (default: $MGR_S3_RETRIES or 10)",
    )
