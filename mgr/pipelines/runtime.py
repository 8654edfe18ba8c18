"""Starting or joining Ray: the embedded local Ray by default, a cluster with ``address``.

Worker processes do their own numeric work (decode, STFT, matrix products): BLAS/OpenMP
threads are pinned to one per process so two processes on two cores do not oversubscribe.

The console shows mgr's lines, not Ray's (unless ``--verbose`` / ``MGR_VERBOSE=1``):

- worker output reaches the driver through Ray's log monitor (``log_to_driver``); mgr keeps
  the workers' *stdout* — where mgr's own worker code prints, e.g. the training epoch lines
  of :func:`mgr.pipelines.train_loop.say` — and leaves their *stderr* (every Ray logger,
  Python warnings, C++ logs of Ray's actors, among them Ray Train's PlacementGroupCleaner)
  in the session folder's ``worker-*.err`` files, where Ray writes it anyway;
- Ray Data logs go to ``ray-data.log`` in the session folder only (its console handler
  is raised to CRITICAL through ``RAY_DATA_LOGGING_CONFIG`` and on the driver's handler:
  a failed task's error is mgr's one line, not Ray Data's traceback), and its progress
  bars are off (mgr prints its own progress);
- the driver's ``ray`` logger prints errors only.

Why not the State API: Ray Train V2 always starts a detached ``PlacementGroupCleaner`` that
polls the controller's state through the State API once a second and logs a warning each
time it fails. That API is served by the full dashboard, which the embedded Ray starts
without (``include_dashboard=False``: a 143 MB stub; with it ~1 GB more and 1–3 s more to
start on this 2-core machine), and Ray 2.60 has no setting to skip the cleaner. The cleaner
only matters when a controller dies while its Ray lives on; an embedded Ray ends with mgr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Iterator

from mgr.errors import JobError

__all__ = ["WORKER_ENV", "ray_session", "worker_env", "verbose", "session_logs", "quiet_ray_console",
           "worker_pool_env"]

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


def worker_pool_env(num_cpus: int | None = None) -> dict[str, str]:
    """Raylet settings of a node running mgr's fractional-CPU tasks (set before it starts).

    mgr's planning and training-ingest tasks take a quarter CPU, so a node runs up to four
    per core next to its actors. Ray keeps only as many *idle* worker processes as the node
    has CPUs (``num_workers_soft_limit``) and kills the rest within a second; each new wave
    of small tasks then starts (and imports pyarrow into) fresh processes. Measured on 2
    cores: the training ingest of 2800 clips took 12.9 s per epoch with the default limit,
    2.6 s with this one. ``RAY_num_workers_soft_limit`` set by the user wins.
    """
    cpus = num_cpus or os.cpu_count() or 1
    return {"RAY_num_workers_soft_limit": os.environ.get("RAY_num_workers_soft_limit", str(4 * cpus + 4))}


#: the Ray Data logging config of a quiet run: Ray's default, its console handler at CRITICAL
_RAY_DATA_QUIET = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"ray": {"format": "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"}},
    "filters": {"console_filter": {"()": "ray.data._internal.logging.HiddenRecordFilter"}},
    "handlers": {
        "file": {"class": "ray.data._internal.logging.SessionFileHandler", "formatter": "ray",
                 "filename": "ray-data.log"},
        "console": {"class": "ray._private.log.PlainRayHandler", "formatter": "ray", "level": "CRITICAL",
                    "filters": ["console_filter"]},
    },
    "loggers": {"ray.data": {"level": "DEBUG", "handlers": ["file", "console"], "propagate": False}},
}

_state: dict = {"logs": None}


def verbose() -> bool:
    """Whether Ray's own console output is wanted (``--verbose`` sets ``MGR_VERBOSE=1``)."""
    return os.environ.get("MGR_VERBOSE", "").lower() in ("1", "true", "yes")


def session_logs() -> str | None:
    """The log folder of the last Ray session this process started or joined (None: none yet)."""
    return _state["logs"]


def _ray_data_quiet_config() -> str:
    """Path of a Ray Data logging config file for quiet runs (written once per user)."""
    import json
    import tempfile

    path = os.path.join(tempfile.gettempdir(), f"mgr-ray-data-logging-{os.getuid()}.yaml")
    text = json.dumps(_RAY_DATA_QUIET, indent=1)  # JSON is YAML
    try:
        with open(path) as fh:
            if fh.read() == text:
                return path
    except OSError:
        pass
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def quiet_ray_console() -> None:
    """Keep Ray's own output off this driver's console (see the module docstring).

    Called after ``ray.init``; leaves worker stdout (mgr's worker lines) on the console.
    """
    import ray
    import ray.data  # configures its logging from RAY_DATA_LOGGING_CONFIG on first import

    logging.getLogger("ray").setLevel(logging.ERROR)
    # Python warnings Ray raises in this process (deprecations of its own API, hints about
    # its operators' concurrency) are for whoever develops mgr: MGR_VERBOSE=1 shows them
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")
    try:
        from ray.util.annotations import RayDeprecationWarning

        warnings.filterwarnings("ignore", category=RayDeprecationWarning)
    except ImportError:
        pass
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.CRITICAL)
    ray.data.DataContext.get_current().enable_progress_bars = False  # mgr prints its own progress
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # another Ray: leave its console as it is
        return
    printer = next((h for name, h in dispatcher.handlers if name == "ray_print_logs"), None)
    if printer is None:
        return

    def stdout_only(batch: dict) -> None:
        if not batch.get("is_err"):
            printer(batch)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", stdout_only)
    _quiet_raylet_notices(ray_worker)
    node = getattr(ray_worker, "_global_node", None)
    try:
        _state["logs"] = node.get_logs_dir_path() if node is not None else None
    except AttributeError:
        _state["logs"] = None


#: raylet notices that are about Ray's worker pool, not anything a user of mgr can act on
#: (mgr's ingest tasks take fractional CPUs on purpose)
_RAYLET_NOISE = ("worker processes have been started on node",)


def _quiet_raylet_notices(ray_worker) -> None:
    """Drop the raylet's worker-pool notices from the console (other raylet messages, such as
    out-of-memory kills, still print). The driver's error-listener thread prints them with
    ``ray._private.worker.print_to_stdstream``, looked up at each call."""
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "mgr_quiet", False):
        return

    def print_unless_noise(data, ignore_prefix: bool = False):
        if data.get("pid") == "raylet" and any(n in line for line in data.get("lines", ()) for n in _RAYLET_NOISE):
            return
        return original(data, ignore_prefix=ignore_prefix)

    print_unless_noise.mgr_quiet = True
    ray_worker.print_to_stdstream = print_unless_noise


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
    quiet = not verbose()
    kwargs: dict = {"logging_level": logging.ERROR if quiet else logging.WARNING, "log_to_driver": True}
    if joining:
        if not os.environ.get("RAY_JOB_ID") and not os.environ.get("RAY_ADDRESS"):
            kwargs["runtime_env"] = {"env_vars": env}
        kwargs["address"] = address
    else:
        if quiet:  # before ray.init: the embedded Ray's workers inherit this environment
            env["RAY_DATA_LOGGING_CONFIG"] = _ray_data_quiet_config()
        for key, value in {**env, **worker_pool_env(num_cpus)}.items():
            os.environ.setdefault(key, value)
        # no usage reporting from an embedded Ray (it also saves a helper actor's start-up)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # "local": always a fresh embedded Ray, never a cluster someone started with
        # `ray start` on this machine (which a bare ray.init() would silently join)
        kwargs.update(address="local", num_cpus=num_cpus, include_dashboard=False)
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - e.g. "node timed out during startup" is a bare Exception
        target = address or os.environ.get("RAY_ADDRESS") or "a local Ray"
        raise JobError(f"cannot start or reach Ray at {target}: {str(exc).splitlines()[0]}") from None
    if quiet:
        quiet_ray_console()
    try:
        yield
    finally:
        ray.shutdown()
