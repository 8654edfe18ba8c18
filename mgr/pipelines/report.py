"""The labeling report of a labels OUTPUT: one aggregate pass, then ``_report/`` (or any folder).

Each block of the labels dataset is reduced to a small aggregate
(:func:`mgr.reporting.labels_report.block_aggregate`: counts, hours, fixed-size
confidence histograms, a few error examples, the block's N least confident tracks) and the
driver merges those as they arrive, so it holds a few kilobytes whether OUTPUT has ten rows
or ten million. On an OUTPUT of many part files the pass is a Ray Data ``map_batches``
over the part files (on the running Ray, or a local one); a small OUTPUT is read part by
part in this process (same aggregate, no Ray start-up or dataset planning for ten tracks).
"""

from __future__ import annotations

import json
from typing import Any, Callable

from mgr.datasets.labelset import read_marker
from mgr.errors import StorageError
from mgr.io.location import Location
from mgr.io.parts import list_parts
from mgr.reporting.labels_report import (COLUMNS, block_aggregate, empty_aggregate, merge_aggregates,
                                         render_labels_report)

__all__ = ["REPORT_DIR", "REVIEW_ROWS", "LOCAL_PARTS", "labels_aggregate", "write_labels_report", "report_summary",
           "render_report"]

#: the report's folder inside a labels OUTPUT (``_``: pyarrow and pandas skip it)
REPORT_DIR = "_report"
#: least confident tracks listed in review.csv
REVIEW_ROWS = 200
#: at most this many part files are aggregated in process when no Ray is running
LOCAL_PARTS = 32


def _aggregate_batch(batch, *, top_n: int) -> dict:
    import numpy as np

    return {"agg": np.array([json.dumps(block_aggregate(batch, top_n=top_n))])}


def labels_aggregate(labels: Location | str, *, top_n: int = REVIEW_ROWS, endpoint_url: str | None = None,
                     use_ray: bool | None = None, address: str | None = None,
                     num_cpus: int | None = None) -> dict[str, Any]:
    """The merged aggregate of every row of a labels dataset.

    Parameters
    ----------
    labels : Location or str
        The labels OUTPUT folder (local or ``s3://``).
    top_n : int
        Least confident tracks to keep.
    use_ray : bool, optional
        Force the Ray Data pass (True) or the in-process one (False); default: Ray when the
        dataset has more than :data:`LOCAL_PARTS` part files (starting a local Ray, or using
        the running one).

    Raises
    ------
    StorageError
        The folder holds no labels part file, or one cannot be read.
    """
    loc = Location.of(labels, endpoint_url=endpoint_url)
    parts, _ = list_parts(loc)
    if not parts:
        raise StorageError(f"{loc.uri} holds no labels (no part-*.parquet); is it the OUTPUT of mgr label?",
                           retryable=False)
    if use_ray is None:
        use_ray = len(parts) > LOCAL_PARTS
    if not use_ray:
        return _aggregate_here(loc, parts, top_n=top_n)
    from mgr.pipelines.runtime import ray_session

    with ray_session(address=address, num_cpus=num_cpus, endpoint_url=loc.endpoint_url):
        return _aggregate_on_ray(loc, parts, top_n=top_n)


def _aggregate_here(loc: Location, parts: list[str], *, top_n: int) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = empty_aggregate()
    for p in parts:
        try:
            with loc.fs.open(p, "rb") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=65536, columns=list(COLUMNS)):
                    total = merge_aggregates(total, block_aggregate(pa.Table.from_batches([batch]), top_n=top_n),
                                             top_n=top_n)
        except (OSError, pa.ArrowInvalid) as exc:
            raise StorageError(f"cannot read {p} of {loc.uri}: {exc}") from None
    return total


def _aggregate_on_ray(loc: Location, parts: list[str], *, top_n: int) -> dict[str, Any]:
    import ray.data

    fs, _ = loc.arrow_filesystem()
    ds = ray.data.read_parquet(parts, filesystem=fs, columns=list(COLUMNS), num_cpus=0.25)
    aggs = ds.map_batches(_aggregate_batch, batch_format="pyarrow", batch_size=None, num_cpus=0.25,
                          fn_kwargs={"top_n": top_n})
    total = empty_aggregate()
    for row in aggs.iter_rows():
        total = merge_aggregates(total, json.loads(row["agg"]), top_n=top_n)
    return total


def write_labels_report(labels: Location | str, *, out: Location | str | None = None, top_n: int = REVIEW_ROWS,
                        endpoint_url: str | None = None, use_ray: bool | None = None, address: str | None = None,
                        num_cpus: int | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the labeling report of ``labels``: ``index.html``, its PNGs and ``review.csv``.

    Parameters
    ----------
    labels : Location or str
        The labels OUTPUT.
    out : Location or str, optional
        Folder for the report (default ``labels/_report``); a str takes ``endpoint_url``.
    top_n : int
        Rows of ``review.csv`` (the least confident tracks).

    Returns
    -------
    dict
        ``dir`` (the report folder's uri), ``index`` (the page's uri), ``files`` (names
        written), ``tracks``, ``errors``, ``unknown``.
    """
    loc = Location.of(labels, endpoint_url=endpoint_url)
    agg = labels_aggregate(loc, top_n=top_n, use_ray=use_ray, address=address, num_cpus=num_cpus)
    return render_report(agg, labels=loc, marker=read_marker(loc), out=out, log=log)


def report_summary(*, top_n: int = REVIEW_ROWS):
    """The report's aggregate as a :class:`~mgr.pipelines.catalog.PartSummary`: ``mgr label``
    computes it in the exactly-once pass over OUTPUT it makes anyway (no second read)."""
    import functools

    from mgr.pipelines.catalog import PartSummary

    return PartSummary(functools.partial(block_aggregate, top_n=top_n), functools.partial(merge_aggregates, top_n=top_n))


def render_report(agg: dict[str, Any] | None, *, labels: Location, marker: dict | None = None,
                  out: Location | str | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the report of the aggregate ``agg`` of ``labels`` (None: no rows) into ``out``
    (default ``labels/_report``); returns what :func:`write_labels_report` does."""
    agg = agg if agg is not None else empty_aggregate()
    dest = labels.join(REPORT_DIR) if out is None else Location.of(out, endpoint_url=labels.endpoint_url)
    files = render_labels_report(agg, source=labels.uri, marker=marker)
    for name, data in sorted(files.items(), key=lambda kv: kv[0] == "index.html"):  # the page last
        dest.join(name).write_bytes(data)
    index = dest.join("index.html").uri
    if log:
        log(f"report: {index} ({agg['rows']:,} tracks, {agg['errors']:,} errors, review.csv: "
            f"{len(agg['lowest'])} least confident)")
    return {"dir": dest.uri, "index": index, "files": sorted(files), "tracks": agg["rows"], "errors": agg["errors"],
            "unknown": agg["unknown"]}
