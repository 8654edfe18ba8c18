"""One module per ``mgr`` subcommand: ``register(subparsers)`` and the function it calls."""

from __future__ import annotations

import argparse

__all__ = ["add_ray_options", "add_storage_options"]


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
