"""The planner actor of :mod:`mgr.pipelines.output`: resume, anti-join and exactly-once check,
as hash-partitioned Arrow in Ray tasks (``num_cpus`` = :data:`~mgr.pipelines.output.PLAN_CPUS`).

It owns every intermediate object (partitions of the work and of OUTPUT's keys), so none of
them is ever held by the driver, and it is pinned (softly) to the driver's node.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from mgr.errors import LabelSourceError, StorageError
from mgr.io.location import Location
from mgr.io.parts import list_parts, write_part
from mgr.pipelines.catalog import (KEY, RETRYABLE_PREFIX, list_tree, merge_summary, partition_ids,
                                   read_manifest_files, read_output_parts, split_table)
from mgr.pipelines.output import PLAN_CPUS, Labelled, Listing, Manifest, Tables, n_partitions

__all__ = ["Planner"]

#: at most this many distinct labels are reported by a work map task (the folder check)
_MAX_LABELS = 64


def _groups(items: list, n_groups: int, max_size: int = 64) -> list[list]:
    if not items:
        return []
    size = max(1, min(max_size, math.ceil(len(items) / max(1, n_groups))))
    return [items[i: i + size] for i in range(0, len(items), size)]


@ray.remote
def _map_output(output: Location, paths: list[str], n: int, columns, retry_errors: bool,
                remove_unreadable: bool, summarize):
    keys, stats = read_output_parts(output.fs, paths, columns=columns, retry_errors=retry_errors,
                                    remove_unreadable=remove_unreadable, summarize=summarize)
    return (*split_table(keys, n), stats)


def _work_stats(table: pa.Table) -> dict[str, Any]:
    stats: dict[str, Any] = {"rows": table.num_rows, "columns": table.column_names}
    if "label" in table.column_names:
        stats["labels"] = set(pc.unique(table.column("label")).to_pylist()[:_MAX_LABELS]) - {None}
    return stats


@ray.remote
def _map_listing(root: Location, paths: list[str], walk: bool, rows, n: int):
    table = list_tree(root, paths, walk=walk, make_rows=rows)
    return (*split_table(table, n), _work_stats(table))


@ray.remote
def _map_keyed_listing(root: Location, paths: list[str], walk: bool, join, m: int):
    """Listed files as ``uri``, ``key`` (the label join's), cut into ``m`` key partitions."""
    table = list_tree(root, paths, walk=walk, make_rows=lambda uris, _sizes: pa.table(
        {"uri": pa.array(uris, pa.string()), "key": pa.array([join.key_of(u) for u in uris], pa.string())}))
    parts = tuple(split_table(table, m, key="key"))
    return parts if m > 1 else parts[0]


@ray.remote
def _map_label_file(join, m: int):
    """The label file read once (a task, never the driver), cut into ``m`` key partitions."""
    df = join.read()
    ids = partition_ids(pa.array(df["key"].astype(str).tolist(), pa.string()), m)
    parts = tuple(df[ids == i] for i in range(m))
    return parts if m > 1 else parts[0]


@ray.remote
def _join_part(join, rows, n_listed: int, *tables_and_n):
    """One key partition of the label join → work rows cut into ``n`` uri partitions + stats."""
    import pandas as pd

    *tables, n = tables_and_n
    listed = _concat(tables[:n_listed])
    uris = listed.column(KEY).to_pylist() if listed is not None else []
    records, matched = join.records(uris, pd.concat(tables[n_listed:]))
    table = rows(records)
    stats = _work_stats(table)
    stats.update(listed=len(uris), matched=matched)
    return (*split_table(table, n), stats)


@ray.remote
def _map_manifest(files: list[Location], n: int):
    table = read_manifest_files(files)
    return (*split_table(table, n), _work_stats(table))


@ray.remote
def _map_table(table: pa.Table, n: int):
    return (*split_table(table, n), _work_stats(table))


def _concat(tables) -> pa.Table | None:
    tables = [t for t in tables if t is not None]
    return pa.concat_tables(tables, promote_options="default") if tables else None


@ray.remote
def _reduce(n_out: int, slices: int, *tables):
    """One partition: work minus done keys (+ ``retry`` flag) cut into ``slices`` blocks of
    consecutive rows, then the work's keys and the counts (``slices + 2`` returns)."""
    out, work = _concat(tables[:n_out]), _concat(tables[n_out:])
    if work is None:
        work = pa.table({KEY: pa.array([], pa.string())})
    keys = work.column(KEY)
    if pc.count_distinct(keys).as_py() < work.num_rows:
        counts = pc.value_counts(keys)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        raise LabelSourceError(f"the catalog lists {dup!r} more than once; each file may appear once")
    if out is not None and out.num_rows:
        retry = out.column("retry")
        done = out.filter(pc.invert(retry)).column(KEY)
        again = out.filter(retry).column(KEY)
        todo = work.filter(pc.invert(pc.is_in(keys, value_set=done.combine_chunks())))
        flag = pc.is_in(todo.column(KEY), value_set=again.combine_chunks())
    else:
        todo = work
        flag = pa.array([False] * work.num_rows, pa.bool_())
    todo = todo.append_column("retry", flag)
    stats = {"work": work.num_rows, "todo": todo.num_rows, "retry": int(pc.sum(flag).as_py() or 0)}
    bounds = [todo.num_rows * i // slices for i in range(slices + 1)]  # sizes differ by at most one
    return (*(todo.slice(a, b - a) for a, b in zip(bounds, bounds[1:])), work.select([KEY]), stats)


@ray.remote
def _check(n_out: int, *tables) -> dict:
    """One partition of the exactly-once check: OUTPUT's keys against the work's."""
    out, work = _concat(tables[:n_out]), tables[-1]
    rows = 0 if out is None else out.num_rows
    distinct = 0 if out is None else pc.count_distinct(out.column(KEY)).as_py()
    if out is None or not out.num_rows:
        missing = work.column(KEY)
    else:
        missing = work.filter(pc.invert(pc.is_in(work.column(KEY), value_set=out.column(KEY).combine_chunks())))
        missing = missing.column(KEY)
    return {"rows": rows, "distinct": distinct, "duplicates": rows - distinct, "missing": len(missing),
            "missing_examples": missing.slice(0, 3).to_pylist()}


@ray.remote
def _drop_rows(output: Location, part: str) -> int:
    """Rewrite ``part`` without its storage-error rows (deleted first: an interruption loses
    rows, which the next run labels again, and never duplicates them)."""
    import pyarrow.parquet as pq

    fs = output.fs
    try:
        with fs.open(part, "rb") as fh:
            table = pq.read_table(fh)
        err = table.column("error")
        again = pc.fill_null(pc.starts_with(err, RETRYABLE_PREFIX), False)
        keep = table.filter(pc.invert(again))
        fs.rm(part)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(f"cannot rewrite {part} of {output.uri}: {exc}", retryable=True) from None
    if keep.num_rows:
        write_part(keep, output)
    return table.num_rows - keep.num_rows


@ray.remote
class Planner:
    """Plans and checks one run over one OUTPUT (see :class:`mgr.pipelines.output.DatasetOutput`)."""

    def __init__(self, output: Location, *, read_columns, check_columns, remove_unreadable: bool, summarize,
                 cpus: int) -> None:
        self.output, self.read_columns, self.check_columns = output, tuple(read_columns), tuple(check_columns)
        self.remove_unreadable, self.summarize, self.cpus = remove_unreadable, summarize, cpus
        self.keys: list = []  # per-partition refs of the work's keys (for check)
        self.retry_parts: list[str] = []
        self.n = 1

    def _parts(self) -> tuple[list[str], list[str]]:
        try:
            return list_parts(self.output)
        except OSError as exc:
            raise StorageError(f"cannot list OUTPUT {self.output.uri}: {exc}", retryable=True) from None

    def clean(self) -> int:
        """Remove temporary files a crashed run left behind."""
        _, tmp = self._parts()
        for p in tmp:
            self.output.fs.rm(p)
        return len(tmp)

    def clear(self, marker: str) -> int:
        data, _ = self._parts()
        if data:
            self.output.fs.rm(data)
        self.output.join(marker).rm()
        return len(data)

    def _work_tasks(self, work) -> list[tuple]:
        """``(remote function, args)`` of the map tasks that read the work (``n`` appended)."""
        if isinstance(work, Tables):
            return [(_map_table, (ref,)) for ref in work.refs]
        if isinstance(work, Manifest):
            loc = work.location
            if not loc.exists():
                raise LabelSourceError(f"cannot read manifest: {loc.uri} not found")
            if loc.isdir():
                names = sorted(p for p in loc.files() if p.lower().endswith((".csv", ".parquet", ".pq"))
                               and not p.rsplit("/", 1)[-1].startswith(("_", ".")))
                files = [Location(loc.child_uri(p), endpoint_url=loc.endpoint_url) for p in names]
            else:
                files = [loc]
            return [(_map_manifest, (g,)) for g in _groups(files, 4 * self.cpus)]
        if isinstance(work, Labelled):
            groups = self._listing_groups(work.location)
            m = n_partitions(math.ceil(len(groups) / 2))
            listed = [_map_keyed_listing.options(num_cpus=PLAN_CPUS, num_returns=m).remote(
                work.location, paths, walk, work.join, m) for paths, walk in groups]
            listed = [[r] if m == 1 else r for r in listed]
            labels = _map_label_file.options(num_cpus=PLAN_CPUS, num_returns=m).remote(work.join, m)
            labels = [labels] if m == 1 else labels
            return [(_join_part, (work.join, work.rows, len(listed), *[r[i] for r in listed], labels[i]))
                    for i in range(m)]
        assert isinstance(work, Listing)
        return [(_map_listing, (work.location, paths, walk, work.rows))
                for paths, walk in self._listing_groups(work.location)]

    def _listing_groups(self, root: Location) -> list[tuple[list[str], bool]]:
        """``(paths, walk)`` of the listing tasks below ``root``: groups of top-level folders
        (walked) and one group of its top-level files."""
        if not root.exists():
            raise StorageError(f"input {root.uri} does not exist", retryable=False)
        fs = root.fs
        fs.invalidate_cache(root.path)  # a grown catalog must be listed afresh
        if not root.isdir():
            return [([root.path], False)]
        entries = fs.ls(root.path, detail=True)
        dirs = sorted(e["name"] for e in entries if e.get("type") == "directory")
        files = sorted(e["name"] for e in entries if e.get("type") != "directory")
        return ([(g, True) for g in _groups(dirs, 4 * self.cpus, max_size=1 << 30)]
                + [(g, False) for g in _groups(files, 1, max_size=1 << 30)])

    def plan(self, work, *, retry_errors: bool, ignore_output: bool) -> dict[str, Any]:
        data = [] if ignore_output else self._parts()[0]
        out_groups = _groups(data, 4 * self.cpus)
        tasks = self._work_tasks(work)
        self.n = n = n_partitions(math.ceil((len(out_groups) + len(tasks)) / 2))
        opts = {"num_cpus": PLAN_CPUS, "num_returns": n + 1}
        out_refs = [_map_output.options(**opts).remote(self.output, g, n, self.read_columns, retry_errors,
                                                       self.remove_unreadable, None) for g in out_groups]
        work_refs = [fn.options(**opts).remote(*args, n) for fn, args in tasks]
        out_stats = ray.get([r[n] for r in out_refs])
        work_stats = ray.get([r[n] for r in work_refs])
        # A map stage gives each todo block to one task: a flat folder or one manifest is a
        # single partition, so each is cut into slices, about four blocks per CPU in all.
        slices = max(1, math.ceil(4 * self.cpus / n))
        reduced = [_reduce.options(num_cpus=PLAN_CPUS, num_returns=slices + 2).remote(
            len(out_refs), slices, *[r[i] for r in out_refs], *[r[i] for r in work_refs]) for i in range(n)]
        del out_refs, work_refs
        stats = ray.get([r[slices + 1] for r in reduced])
        self.keys = [r[slices] for r in reduced]
        output: dict[str, Any] = {"rows": 0, "errors": 0, "model_ids": set(), "columns": None, "genres": None,
                                  "removed": 0}
        self.retry_parts = []
        for s in out_stats:
            output["rows"] += s["rows"]
            output["errors"] += s["errors"]
            output["removed"] += s["removed"]
            output["model_ids"] |= s["model_ids"]
            output["columns"] = output["columns"] or s["columns"]
            output["genres"] = output["genres"] or s["genres"]
            self.retry_parts += s["retry_parts"]
        output["model_ids"] = sorted(output["model_ids"])
        columns: list[str] = []
        work_summary: dict[str, Any] = {}
        for s in work_stats:
            if s["rows"]:
                columns = columns or list(s["columns"])
                if list(s["columns"]) != columns:
                    raise LabelSourceError(f"the catalog's files have different columns: {columns} and "
                                           f"{list(s['columns'])}")
            merge_summary(work_summary, {k: v for k, v in s.items() if k in ("labels", "listed", "matched")})
        todo = sum(s["todo"] for s in stats)
        return {"todo_refs": [ref for r in reduced for ref in r[:slices]], "todo": todo,
                "work": sum(s["work"] for s in stats),
                "done": sum(s["work"] - s["todo"] for s in stats), "retry": sum(s["retry"] for s in stats),
                "output": output, "work_columns": columns, "work_summary": work_summary}

    def drop_retried(self) -> int:
        dropped = ray.get([_drop_rows.options(num_cpus=PLAN_CPUS).remote(self.output, p) for p in self.retry_parts])
        self.retry_parts = []
        return sum(dropped)

    def check(self) -> dict[str, Any]:
        self.output.fs.invalidate_cache(self.output.path)  # the workers wrote new files
        data = self._parts()[0]
        n = self.n
        opts = {"num_cpus": PLAN_CPUS, "num_returns": n + 1}
        refs = [_map_output.options(**opts).remote(self.output, g, n, self.check_columns, False, False,
                                                   self.summarize) for g in _groups(data, 4 * self.cpus)]
        parts = ray.get([_check.options(num_cpus=PLAN_CPUS).remote(len(refs), *[r[i] for r in refs], self.keys[i])
                         for i in range(n)])
        stats = ray.get([r[n] for r in refs])
        out: dict[str, Any] = {"rows": 0, "distinct": 0, "duplicates": 0, "missing": 0, "missing_examples": [],
                               "errors": sum(s["errors"] for s in stats), "summary": None}
        for p in parts:
            merge_summary(out, p)
        for s in stats:
            out["summary"] = self.summarize.fold(out["summary"], s["summary"]) if self.summarize else None
        return out
