"""Starting or joining Ray: the embedded local Ray by default, a cluster with ``address``.

Worker processes do their own numeric work (decode, STFT, matrix products): BLAS/OpenMP
threads are pinned to one per process so two processes on two cores do not oversubscribe.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from mgr.errors import JobError

__all__ = ["WORKER_ENV", "ray_session", "worker_env"]

WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "0",
}


def worker_env(*, endpoint_url: str | None = None) -> dict[str, str]:
    """Environment variables every mgr worker gets (no credentials, ever)."""
    env = dict(WORKER_ENV)
    env["NUMBA_CACHE_DIR"] = os.environ.get("NUMBA_CACHE_DIR", "/tmp/mgr-numba-cache")
    if os.environ.get("MGR_S3_RETRIES"):
        env["MGR_S3_RETRIES"] = os.environ["MGR_S3_RETRIES"]
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


@contextlib.contextmanager
def ray_session(
    *, address: str | None = None, num_cpus: int | None = None, endpoint_url: str | None = None
) -> Iterator[None]:
    """Use the running Ray, or start/join one for the duration of the block.

    Parameters
    ----------
    address : str, optional
        ``ray://`` or ``HOST:PORT`` of a cluster, or ``auto``; None starts an embedded
        local Ray (or joins the cluster when run as a Ray job, where ``RAY_ADDRESS`` is set).
    num_cpus : int, optional
        CPUs of the embedded Ray (all cores by default).
    endpoint_url : str, optional
        S3 endpoint passed to the workers' environment.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    env = worker_env(endpoint_url=endpoint_url)
    joining = bool(address or os.environ.get("RAY_ADDRESS"))
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    if joining:
        if not os.environ.get("RAY_JOB_ID") and not os.environ.get("RAY_ADDRESS"):
            kwargs["runtime_env"] = {"env_vars": env}
        kwargs["address"] = address
    else:
        for key, value in env.items():
            os.environ.setdefault(key, value)
        # no usage reporting from an embedded Ray (it also saves a helper actor's start-up)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # "local": always a fresh embedded Ray, never a cluster someone started with
        # `ray start` on this machine (which a bare ray.init() would silently join)
        kwargs.update(address="local", num_cpus=num_cpus, include_dashboard=False)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        target = address or os.environ.get("RAY_ADDRESS") or "a local Ray"
        raise JobError(f"cannot start or reach Ray at {target}: {str(exc).splitlines()[0]}") from None
    try:
        yield
    finally:
        ray.shutdown()
