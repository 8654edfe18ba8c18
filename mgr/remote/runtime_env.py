"""The runtime_env of an mgr Ray job: what travels to the cluster with it.

The project checkout is the working_dir (without environments, history or data), mgr's
dependencies that the stock Ray image lacks go as ``pip`` when asked, and the workers get
the environment of :func:`mgr.pipelines.runtime.worker_env`: never credentials.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Iterable

from mgr.errors import JobError
from mgr.pipelines.runtime import worker_env

__all__ = ["KINDS", "EXCLUDES", "build_runtime_env", "entrypoint", "pip_requirements", "project_root"]

#: job kinds that ``mgr submit`` knows; each is ``jobs/<kind>.py`` in the project
KINDS = ("extract", "train", "label", "reproduce")

#: working_dir excludes (gitignore syntax): never upload environments, history or data
EXCLUDES = [
    ".venv/",
    "venv/",
    ".git/",
    "demo-run/",
    "data/",
    "**/__pycache__/",
    "*.pyc",
    "*.egg-info/",
    ".pytest_cache/",
    ".notes/",
    "shared/",
    "build/",
    "dist/",
]

#: packages the rayproject/ray image already has (they come with ray[default,data,train])
_IN_RAY_IMAGE = {"ray", "numpy", "pandas", "pyarrow", "pyyaml", "requests", "fsspec"}

#: environment variables that must never travel with a job
_SECRET = re.compile(r"(SECRET|PASSWORD|TOKEN|CREDENTIAL|ACCESS_KEY|SESSION_KEY|PRIVATE)", re.I)


def project_root() -> Path:
    """The project checkout that holds ``mgr/`` and ``jobs/`` (the job's working_dir).

    Raises
    ------
    JobError
        When mgr runs from an installed wheel without the ``jobs/`` entrypoints.
    """
    root = Path(__file__).resolve().parents[2]  # mgr/remote/jobs_client.py → the checkout
    if not (root / "jobs").is_dir() or not (root / "mgr").is_dir():
        raise JobError(
            f"mgr at {root} is not a project checkout (no jobs/ folder): run mgr submit from the mgr "
            "source tree, or use `ray job submit` with an image that has mgr installed"
        )
    return root


def pip_requirements() -> list[str]:
    """mgr's runtime dependencies that the ``rayproject/ray`` image does not ship.

    Returns
    -------
    list of str
        Requirement strings from mgr's package metadata (extras and test-only
        requirements left out), e.g. ``["torch>=2.2,<2.14", "librosa>=0.10", ...]``.
    """
    from importlib import metadata

    try:
        requires = metadata.requires("mgr") or []
    except metadata.PackageNotFoundError:  # pragma: no cover - mgr always installed here
        requires = []
    out = []
    for req in requires:
        if "extra ==" in req or "extra==" in req:
            continue
        name = re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")
        if name not in _IN_RAY_IMAGE:
            out.append(req.split(";")[0].strip())
    return out


def entrypoint(kind: str, args: Iterable[str]) -> str:
    """The shell command the job runs: ``python jobs/<kind>.py <args>`` (quoted)."""
    if kind not in KINDS:
        raise JobError(f"unknown job kind {kind!r}; choose one of {', '.join(KINDS)}")
    return shlex.join(["python", f"jobs/{kind}.py", *args])


def build_runtime_env(*, pip: bool = True, endpoint_url: str | None = None, root: Path | None = None) -> dict:
    """The runtime_env of an mgr job.

    Parameters
    ----------
    pip : bool
        Add :func:`pip_requirements` as the ``pip`` field (for a stock Ray image).
    endpoint_url : str, optional
        S3 endpoint for the workers (else ``$AWS_ENDPOINT_URL`` when set).
    root : Path, optional
        The working_dir (default: :func:`project_root`).

    Returns
    -------
    dict
        ``working_dir``, ``excludes``, ``env_vars`` and, with ``pip``, ``pip``. Variables
        that look like secrets (keys, tokens, passwords) are never included.
    """
    env = {k: v for k, v in worker_env(endpoint_url=endpoint_url).items() if not _SECRET.search(k)}
    runtime_env = {
        "working_dir": str(root or project_root()),
        "excludes": list(EXCLUDES),
        "env_vars": env,
    }
    if pip:
        runtime_env["pip"] = pip_requirements()
    return runtime_env
