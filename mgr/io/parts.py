"""Part files: how mgr's jobs write Parquet so that a file appears only when complete.

Each Ray task (or actor call) writes the rows of its block as one part file whose name is
a digest of the uris it holds: a retried task rewrites the same file instead of adding
duplicate rows. Locally the file is written as ``.tmp-*`` and renamed into place; on S3 an
object becomes visible only when its upload completes. pyarrow's dataset discovery skips
names starting with ``.`` or ``_``, so temporary files and metadata never break
``pyarrow.parquet.read_table(OUTPUT)``.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Sequence

import pyarrow as pa

from mgr.io.location import Location
from mgr.errors import StorageError

__all__ = ["part_name", "write_part", "list_parts", "TMP_PREFIX"]

TMP_PREFIX = ".tmp-"


def part_name(uris: Sequence[str], *, prefix: str = "part") -> str:
    """Deterministic name of the part holding ``uris``."""
    digest = hashlib.sha1("\n".join(sorted(uris)).encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return f"{prefix}-{digest}.parquet"


def write_part(table: pa.Table, output: Location | str, *, endpoint_url: str | None = None, prefix: str = "part",
               compression: str = "zstd") -> str:
    """Write ``table`` as one Parquet part file of ``output`` (a Location, or a uri with its
    endpoint); returns its path."""
    import pyarrow.parquet as pq

    loc = Location.of(output, endpoint_url=endpoint_url)
    name = part_name(table.column("uri").to_pylist(), prefix=prefix)
    fs, base = loc.fs, loc.path
    final = base.rstrip("/") + "/" + name
    try:
        if loc.is_remote:
            with fs.open(final, "wb") as fh:
                pq.write_table(table, fh, compression=compression)
        else:
            os.makedirs(base, exist_ok=True)
            tmp = os.path.join(base, f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}")
            pq.write_table(table, tmp, compression=compression)
            os.replace(tmp, final)
    except OSError as exc:
        raise StorageError(f"cannot write to {loc.uri}: {exc}",
                           retryable=not isinstance(exc, PermissionError)) from None
    return final


def list_parts(output: Location) -> tuple[list[str], list[str]]:
    """``(Parquet data files, leftover temporary files)`` under ``output`` (a fresh listing)."""
    fs, path = output.fs, output.path
    fs.invalidate_cache(path)  # other processes write here: never trust a cached listing
    if not fs.exists(path):
        return [], []
    if fs.isfile(path):
        raise StorageError(f"OUTPUT {path} is a file; mgr writes datasets into a folder")
    data, tmp = [], []
    for p in sorted(fs.find(path)):
        name = p.rsplit("/", 1)[-1]
        if name.startswith(TMP_PREFIX):
            tmp.append(p)
        elif name.endswith(".parquet") and not name.startswith(("_", ".")):
            data.append(p)
    return data, tmp
