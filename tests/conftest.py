"""Shared fixtures: one local Ray per test session, a real S3 endpoint on loopback."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-NEVER-LOGGED",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Fake credentials for the moto server, set before any Ray starts so that its workers
# (which inherit the driver's environment) can sign requests to it.
for _key, _value in TEST_CREDENTIALS.items():
    os.environ.setdefault(_key, _value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_local():
    """The session's local Ray (2 CPUs, no dashboard); shut down at the end."""
    import ray

    from mgr.pipelines.runtime import worker_pool_env

    if not ray.is_initialized():
        os.environ.update(worker_pool_env(2))  # as mgr's own embedded Ray
        # address="local": a fresh Ray even when another one runs on the machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _no_leftover_pipeline_actors():
    """After each test, the session's Ray has all its CPUs back.

    Many jobs share this one Ray (a CLI run has its own, gone when it exits). Ray Data
    releases a finished or failed dataset's actor pool by dropping its handles; an actor
    that produced blocks still referenced (lineage, an exception's traceback) can outlive
    its job and keep a CPU, and a later training test then waits forever for its ingest
    tasks' quarter CPU. Wait for the CPUs to come back; kill Ray Data pool actors that do not.
    """
    yield
    import gc
    import signal
    import sys
    import time

    import ray

    if not ray.is_initialized():
        return
    total = ray.cluster_resources().get("CPU", 0)
    deadline = time.time() + 20
    while ray.available_resources().get("CPU", 0) < total and time.time() < deadline:
        gc.collect()
        time.sleep(0.5)
    if ray.available_resources().get("CPU", 0) >= total:
        return
    from ray._private import state

    for info in state.actors().values():
        if info.get("State") == "ALIVE" and str(info.get("ActorClassName", "")).startswith("MapWorker("):
            print(f"conftest: killing leftover {info['ActorClassName']} (pid {info['Pid']})", file=sys.stderr)
            try:
                os.kill(int(info["Pid"]), signal.SIGKILL)
            except (OSError, TypeError, ValueError):
                pass


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint (moto's ThreadedMotoServer) on 127.0.0.1; yields its URL.

    Fake credentials are put in the environment (and so reach Ray workers started after).
    """
    from moto.server import ThreadedMotoServer

    for key, value in TEST_CREDENTIALS.items():
        os.environ[key] = value
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    yield url
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket on the moto server; yields ``(s3fs filesystem, bucket name)``."""
    import s3fs

    name = "mgr-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)
    if not fs.exists(name):
        fs.mkdir(name)
    yield fs, name
