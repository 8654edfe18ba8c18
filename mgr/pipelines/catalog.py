"""Inputs as data: a catalog (folder/S3 listing or manifest) and an OUTPUT's key column as
hash-partitioned Arrow tables, made in Ray tasks.

Every function here runs in a worker (a task submitted by the planner actor of
:mod:`mgr.pipelines.output`), never on the driver: a listing task walks one subtree, a
manifest task reads one manifest file, an OUTPUT task reads the ``uri`` column (and a few
small ones) of a group of part files. Each splits its rows into ``n_parts`` tables by a
stable hash of ``uri``, so that partition ``i`` of the work and partition ``i`` of OUTPUT
can be compared in one reduce task (the resume anti-join, the exactly-once check).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mgr.datasets.labelset import RETRYABLE_PREFIX
from mgr.io.location import AUDIO_EXTENSIONS, Location

__all__ = ["KEY", "partition_ids", "split_table", "list_tree", "read_manifest_files", "read_output_parts",
           "PartSummary", "merge_summary", "RETRYABLE_PREFIX"]

KEY = "uri"



def partition_ids(keys: pa.Array | pa.ChunkedArray, n_parts: int) -> np.ndarray:
    """The partition (``0 .. n_parts-1``) of each key: a stable hash, the same in every process."""
    import pandas as pd

    if n_parts <= 1 or len(keys) == 0:
        return np.zeros(len(keys), dtype=np.int64)
    values = keys.to_numpy(zero_copy_only=False) if hasattr(keys, "to_numpy") else np.asarray(keys, dtype=object)
    return (pd.util.hash_array(values.astype(object), categorize=False) % np.uint64(n_parts)).astype(np.int64)


def split_table(table: pa.Table, n_parts: int, *, key: str = KEY) -> list[pa.Table]:
    """``table`` cut into ``n_parts`` tables by :func:`partition_ids` of its ``key`` column."""
    ids = partition_ids(table.column(key), n_parts)
    order = np.argsort(ids, kind="stable")
    bounds = np.searchsorted(ids[order], np.arange(n_parts + 1))
    sorted_table = table.take(pa.array(order))
    return [sorted_table.slice(int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------- listings

def list_tree(root: Location, paths: Sequence[str], *, walk: bool,
              make_rows: Callable[[list[str], list[int]], pa.Table]) -> pa.Table:
    """The audio files of ``paths`` (folders walked when ``walk``, else files) as one table.

    ``make_rows(uris, sizes)`` turns a listed chunk into the work table (``uri`` first).
    """
    fs = root.fs
    exts = tuple(AUDIO_EXTENSIONS)
    uris: list[str] = []
    sizes: list[int] = []
    for path in paths:
        if walk:
            for _, _, files in fs.walk(path, detail=True):
                for info in files.values():
                    name = info["name"]
                    if name.lower().endswith(exts):
                        uris.append(root.child_uri(name))
                        sizes.append(int(info.get("size") or 0))
        elif path.lower().endswith(exts):
            uris.append(root.child_uri(path))
            try:
                sizes.append(int(fs.info(path).get("size") or 0))
            except OSError:  # a dangling link: listed, its read fails later as a row's error
                sizes.append(0)
    return make_rows(uris, sizes)


def audio_rows(uris: list[str], sizes: list[int]) -> pa.Table:
    """The work rows of ``mgr label`` for listed files: ``uri``, ``track_id``."""
    from mgr.datasets.sources import track_id_from_uri

    return pa.table({"uri": pa.array(uris, pa.string()),
                     "track_id": pa.array([track_id_from_uri(u) for u in uris], pa.string())})


# --------------------------------------------------------------------------- manifests

def read_manifest_files(files: Sequence[Location]) -> pa.Table:
    """Read manifest files (CSV or Parquet) into the work rows of ``mgr label``.

    ``uri`` absolute, or relative to the manifest's folder; ``track_id`` from the manifest
    or the file name; every other column carried through as strings. Rows without a uri
    are skipped.

    Raises
    ------
    LabelSourceError
        A file cannot be parsed or has no ``uri`` column.
    """
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from mgr.datasets.sources import track_id_from_uri
    from mgr.datasets.sources.manifest import manifest_uri
    from mgr.errors import LabelSourceError

    out = []
    for loc in files:
        try:
            if loc.uri.lower().endswith((".parquet", ".pq")):
                with loc.fs.open(loc.path, "rb") as fh:
                    table = pq.read_table(fh)
            else:
                opts = pcsv.ConvertOptions(column_types={"uri": pa.string(), "track_id": pa.string()},
                                           strings_can_be_null=True)
                with loc.fs.open(loc.path, "rb") as fh:
                    table = pcsv.read_csv(fh, convert_options=opts)
        except (pa.ArrowInvalid, OSError) as exc:
            raise LabelSourceError(f"cannot parse manifest {loc.uri}: {str(exc).splitlines()[0]}") from None
        if "uri" not in table.column_names:
            raise LabelSourceError(f"manifest {loc.uri} has no 'uri' column (columns: {table.column_names})")
        base = loc.uri.rsplit("/", 1)[0] if "/" in loc.uri else "."
        cols = {name: pc.cast(table.column(name), pa.string()) for name in table.column_names}
        raw = cols.pop("uri").to_pylist()
        given = cols.pop("track_id").to_pylist() if "track_id" in cols else [None] * len(raw)
        keep = [i for i, u in enumerate(raw) if u]
        uris = [manifest_uri(raw[i], base) for i in keep]
        ids = [given[i] or track_id_from_uri(u) for i, u in zip(keep, uris)]
        idx = pa.array(keep, pa.int64())
        data = {"uri": pa.array(uris, pa.string()), "track_id": pa.array(ids, pa.string())}
        data.update({name: col.take(idx) for name, col in cols.items()})
        out.append(pa.table(data))
    return pa.concat_tables(out) if out else pa.table({"uri": pa.array([], pa.string()),
                                                       "track_id": pa.array([], pa.string())})


# --------------------------------------------------------------------------- OUTPUT

@dataclass(frozen=True)
class PartSummary:
    """How the exactly-once pass over OUTPUT also summarises its rows (no second read).

    Attributes
    ----------
    of : callable
        ``of(table) -> dict``: the summary of one part's ``check_columns``.
    merge : callable, optional
        ``merge(a, b) -> dict``: both summaries combined (``a`` may be changed and returned);
        default :func:`merge_summary`.
    """

    of: Callable[[pa.Table], dict]
    merge: Callable[[dict, dict], dict] | None = None

    def fold(self, total: dict | None, part: dict | None) -> dict | None:
        """``total`` and ``part`` merged (either may be None: nothing summarised yet)."""
        if part is None:
            return total
        return part if total is None else (self.merge or merge_summary)(total, part)


def read_output_parts(fs, paths: Sequence[str], *, columns: Sequence[str], retry_errors: bool,
                      remove_unreadable: bool, summarize: PartSummary | None = None,
                      ) -> tuple[pa.Table, dict[str, Any]]:
    """Read ``columns`` (``uri`` and a few small ones) of OUTPUT part files.

    Returns
    -------
    keys : pa.Table
        ``uri`` and ``retry`` (bool: the row's error is a storage one and ``retry_errors``
        asked to label it again; such rows are not done).
    stats : dict
        ``rows``, ``errors``, ``model_ids`` (set), ``columns`` and ``genres`` of the first
        file, ``retry_parts`` (parts holding rows to retry), ``removed`` (unreadable parts
        removed) and ``summary``, the folded ``summarize.of(table)`` of every part (None
        without ``summarize`` or parts).

    Raises
    ------
    StorageError
        A part is not a readable Parquet file (unless ``remove_unreadable``).
    """
    import json

    import pyarrow.parquet as pq

    from mgr.errors import StorageError

    keys, flags = [], []
    stats: dict[str, Any] = {"rows": 0, "errors": 0, "model_ids": set(), "columns": None, "genres": None,
                             "retry_parts": [], "removed": 0, "summary": None}
    for p in paths:
        try:
            with fs.open(p, "rb") as fh:
                pf = pq.ParquetFile(fh)
                names = pf.schema_arrow.names
                if stats["columns"] is None:
                    stats["columns"] = list(names)
                    raw = (pf.schema_arrow.metadata or {}).get(b"mgr.genres")
                    stats["genres"] = json.loads(raw) if raw else []
                t = pf.read(columns=[c for c in columns if c in names])
        except (OSError, pa.ArrowInvalid, KeyError) as exc:
            if remove_unreadable:
                fs.rm(p)  # not a complete Parquet file: its rows are redone
                stats["removed"] += 1
                continue
            raise StorageError(f"{p.rsplit('/', 1)[0]} holds {p.rsplit('/', 1)[-1]}, which is not a readable "
                               f"labels file ({exc}); remove it or use --overwrite") from None
        stats["rows"] += t.num_rows
        err = t.column("error") if "error" in t.column_names else None
        if err is not None:
            stats["errors"] += t.num_rows - err.null_count
        if "model_id" in t.column_names:
            stats["model_ids"].update(m for m in t.column("model_id").unique().to_pylist() if m is not None)
        retry = np.zeros(t.num_rows, dtype=bool)
        if retry_errors and err is not None and err.null_count < t.num_rows:
            retry = np.asarray(pc.fill_null(pc.starts_with(err, RETRYABLE_PREFIX), False))
            if retry.any():
                stats["retry_parts"].append(p)
        keys.append(t.column("uri"))
        flags.append(pa.array(retry))
        if summarize is not None:
            stats["summary"] = summarize.fold(stats["summary"], summarize.of(t))
    table = pa.table({"uri": pa.chunked_array(keys, pa.string()) if keys else pa.array([], pa.string()),
                      "retry": pa.chunked_array(flags, pa.bool_()) if flags else pa.array([], pa.bool_())})
    return table, stats


def merge_summary(into: dict, more: dict) -> dict:
    """Add ``more`` into ``into``: numbers add, Counters/dicts add key by key, sets unite."""
    for k, v in more.items():
        if isinstance(v, (set, frozenset)):
            into.setdefault(k, set()).update(v)
        elif isinstance(v, dict):
            merge_summary(into.setdefault(k, {}), v)
        elif isinstance(v, list):
            into.setdefault(k, [])
            into[k].extend(v[: max(0, 5 - len(into[k]))])  # a few examples, never every row
        else:
            into[k] = into.get(k, 0) + v
    return into


def counter(values) -> dict:
    """``{value: count}`` of a list (None skipped)."""
    return dict(Counter(v for v in values if v is not None))
