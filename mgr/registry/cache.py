"""The local cache of pulled models and the resolution of ``--model NAME|DIR``.

The cache is a folder of model directories, one per registry name:
``$MGR_HOME/<name>/`` (``MGR_HOME`` defaults to ``~/.cache/mgr/models``). Only
``mgr models pull`` writes there, and only whole, verified directories (built in a
temporary folder beside them and renamed).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mgr.registry.catalog import CATALOG, RegistryError, entry

__all__ = ["DEFAULT_HOME", "cache_root", "cached_dir", "is_cached", "resolve_model", "sha256_file",
           "find_local_weights"]

DEFAULT_HOME = "~/.cache/mgr/models"
#: mgr.models.modeldir.SPEC_FILE (not imported here: mgr.models loads torch, and `mgr models list` need not)
SPEC_FILE = "model.json"


def cache_root() -> Path:
    """The cache folder: ``$MGR_HOME`` or ``~/.cache/mgr/models`` (not created here)."""
    return Path(os.path.expanduser(os.environ.get("MGR_HOME") or DEFAULT_HOME)).absolute()


def cached_dir(name: str) -> Path:
    """Where the model directory of ``name`` lives in the cache (whether pulled or not)."""
    return cache_root() / entry(name).name


def is_cached(name: str) -> bool:
    """True when ``name`` has been pulled (its cached directory holds a ``model.json``)."""
    return (cached_dir(name) / SPEC_FILE).is_file()


def resolve_model(value: str) -> str:
    """The model directory that ``--model VALUE`` means.

    An ``s3://``/URI or an existing local path is taken as it is (a path wins over a name);
    a registry name is its cached directory; anything else is returned unchanged for the
    command to report (``... is not a model directory``).

    Raises
    ------
    RegistryError
        ``value`` names a known model that is not in the cache: the message gives the
        ``mgr models pull`` command to run.
    """
    if "://" in value or os.path.exists(value) or value not in CATALOG:
        return value
    where = cached_dir(value)
    if not (where / SPEC_FILE).is_file():
        raise RegistryError(f"model {value!r} is not in the local cache ({cache_root()}): run "
                            f"`mgr models pull {value}` first (offline: `mgr models pull {value} --from FILE`)")
    return str(where)


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def find_local_weights(name: str, folders: list[str | os.PathLike]) -> Path | None:
    """A file in ``folders`` that is the published file of ``name`` (same size and sha256).

    Used by the demo to find weights already on this machine (e.g. ``../shared/data/weights``)
    without downloading; returns None when none matches.
    """
    ent = entry(name)
    for folder in folders:
        for file_name in ent.local_names:
            cand = Path(folder) / file_name
            try:
                if cand.is_file() and cand.stat().st_size == ent.size and sha256_file(cand) == ent.sha256:
                    return cand
            except OSError:
                continue
    return None
