"""The extraction job: audio files → log-mel features dataset (Parquet), on Ray Data.

The work is the listing of INPUT as Arrow blocks, made in Ray tasks (with ``--labels
fma:``/``manifest:``, joined there with the label file by key, partition by partition: the
driver never holds a record); the output
protocol (:mod:`mgr.pipelines.output`) removes what OUTPUT already holds; a pool of actors
reads, decodes and analyses each file in place (:mod:`mgr.pipelines.extract_step`) and
writes Parquet parts. ``_features.json`` is written last, once every input is accounted for.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mgr import __version__
from mgr.config import get_preset
from mgr.datasets.featureset import MANIFEST_NAME
from mgr.datasets.sources import LabelJoin, parse_labels_spec, track_id_from_uri
from mgr.datasets.sources.fma import NO_MATCH
from mgr.datasets.sources.split import assign_splits
from mgr.errors import JobError, LabelSourceError, StorageError
from mgr.io.location import AUDIO_EXTENSIONS
from mgr.io.parts import write_part
from mgr.datasets.labelset import error_class
from mgr.pipelines.catalog import PartSummary, counter
from mgr.pipelines.catalog_config import ExtractConfig
from mgr.pipelines.output import (DatasetOutput, Labelled, Listing, Plan, alive_cpus, map_batches, no_restarts,
                                  totals_row)
from mgr.pipelines.progress import Progress

__all__ = ["extract", "ExtractConfig"]

#: the columns of a work record (one per input file)
RECORD_SCHEMA = pa.schema([(n, pa.string()) for n in ("uri", "track_id", "label", "split", "artist", "error")])


def extract(cfg: ExtractConfig, *, progress: bool = True) -> dict[str, Any]:
    """Extract log-mel features of every audio file under ``cfg.input`` into ``cfg.output``.

    Parameters
    ----------
    cfg : ExtractConfig
        The whole job (see :class:`~mgr.pipelines.catalog_config.ExtractConfig`).
    progress : bool
        Print the live progress line (stderr).

    Returns
    -------
    dict
        The ``_features.json`` content plus ``run`` (files extracted/skipped, seconds, files_per_s).
    """
    from mgr.pipelines.runtime import ray_session

    fc = get_preset(cfg.preset)
    kind, _ = parse_labels_spec(cfg.labels)
    if not cfg.input.exists():
        raise StorageError(f"input {cfg.input.uri} does not exist", retryable=False)
    started = time.time()
    out = DatasetOutput(cfg.output, command="mgr extract", marker=MANIFEST_NAME, read_columns=("uri",),
                        check_columns=("uri", "label", "split", "error", "duration_s"), remove_unreadable=True,
                        summarize=PartSummary(features_summary))
    with ray_session(address=cfg.address, num_cpus=cfg.num_cpus, endpoint_url=cfg.endpoint_url), out.open():
        work = _work(cfg, kind)
        plan = out.plan(work, ignore_output=cfg.overwrite)
        _check_work(cfg, kind, plan)
        if cfg.overwrite:
            out.clear()
        if plan.todo:
            out.drop_marker()  # the old _features.json no longer describes OUTPUT until this run ends
            bar = Progress("extracted", plan.todo, enabled=progress)
            out.write(plan, work, lambda p: _dataset(p, cfg, fc),
                      on_totals=lambda t: bar.update(files=t["files"], errors=t["errors"], audio_s=t["audio_s"]),
                      what=f"extraction failed while writing {cfg.output.uri}")
            bar.close()
        elapsed = time.time() - started
        check = out.complete()
        if check["duplicates"] or check["missing"]:
            raise JobError(
                f"OUTPUT {cfg.output.uri} is inconsistent: {check['missing']} input file(s) missing, "
                f"{check['duplicates']} duplicated (was it written by another run at the same time?); "
                "re-run with --overwrite")
        manifest = _features_json(cfg, fc, check)
        manifest["run"] = {
            "files_extracted": plan.todo,
            "files_skipped_already_done": plan.done,
            "seconds": round(elapsed, 3),
            "files_per_s": round(plan.todo / elapsed, 3) if elapsed > 0 else None,
        }
        out.write_marker(manifest)
    return manifest


# --------------------------------------------------------------------------- the work

def listing_records(uris: list[str], sizes: list[int], *, kind: str, ratios, seed: int,
                    group_by: str | None) -> pa.Table:
    """Work records of listed files for ``--labels none|folder`` (run in listing tasks)."""
    records = [{"uri": u, "track_id": track_id_from_uri(u), "artist": None, "error": None, "split": None,
                "label": (u.rstrip("/").split("/")[-2] or None) if kind == "folder" and "/" in u else None}
               for u in uris]
    assign_splits(records, ratios=ratios, seed=seed, group_by=group_by, keep_source_split=False)
    return pa.Table.from_pylist(records, schema=RECORD_SCHEMA)


def labelled_records(records: list[dict], *, ratios, seed: int, group_by: str | None,
                     keep_source_split: bool) -> pa.Table:
    """Work records of one key partition of a label join (``--labels fma:|manifest:``)."""
    assign_splits(records, ratios=ratios, seed=seed, group_by=group_by, keep_source_split=keep_source_split)
    return pa.Table.from_pylist([{k: r.get(k) for k in RECORD_SCHEMA.names} for r in records], schema=RECORD_SCHEMA)


def _work(cfg: ExtractConfig, kind: str):
    """The work of the planner: a listing, or a listing joined with the label file."""
    if kind in ("none", "folder"):
        rows = functools.partial(listing_records, kind=kind, ratios=cfg.split, seed=cfg.seed, group_by=cfg.group_by)
        return Listing(cfg.input, rows)
    _, path = parse_labels_spec(cfg.labels)
    join = LabelJoin(kind, path, input_uri=cfg.input.uri, subset=cfg.subset, endpoint_url=cfg.endpoint_url)
    rows = functools.partial(labelled_records, ratios=cfg.split, seed=cfg.seed, group_by=cfg.group_by,
                             keep_source_split=cfg.official_split or kind == "manifest")
    return Labelled(cfg.input, join, rows)


def _check_work(cfg: ExtractConfig, kind: str, plan: Plan) -> None:
    if not plan.work or plan.work_summary.get("listed", 1) == 0:
        raise StorageError(f"no audio files found under {cfg.input.uri} (extensions: {', '.join(AUDIO_EXTENSIONS)})")
    if kind == "fma" and not plan.work_summary.get("matched"):
        raise LabelSourceError(NO_MATCH)
    labels = plan.work_summary.get("labels", set())
    if kind == "folder" and len(labels) < 2:
        raise LabelSourceError(
            f"--labels folder expects one folder per genre (e.g. blues/, rock/ under INPUT); "
            f"found {len(labels)} folder(s): {sorted(map(str, labels))[:5]}")


# --------------------------------------------------------------------------- the pipeline

def _extractor_class(fc, max_seconds, endpoint_url, output):
    """The actor class, with its settings bound in the class (no constructor arguments: Ray
    would keep those in the object store and warn that a restarted actor may lose them)."""

    class _Extractor:
        """Actor: decodes and analyses a block of records and writes them as one part file."""

        def __init__(self):
            from mgr.pipelines.extract_step import extract_rows

            self.run = extract_rows

        def __call__(self, batch: pa.Table) -> pa.Table:
            records = batch.select(RECORD_SCHEMA.names).to_pylist()
            table = self.run(records, cfg=fc, max_seconds=max_seconds, endpoint_url=endpoint_url)
            if table.num_rows:
                write_part(table, output)
            return totals_row(extract_totals(table))

    return _Extractor


def extract_totals(table: pa.Table) -> dict[str, Any]:
    """The small totals of one written block."""
    err = table.column("error")
    ok = table.filter(pc.is_null(err))
    return {"files": table.num_rows, "errors": table.num_rows - ok.num_rows,
            "audio_s": float(pc.sum(ok.column("duration_s")).as_py() or 0.0),
            "error_kinds": counter(error_class(e) for e in err.drop_null().to_pylist())}


def _dataset(plan: Plan, cfg: ExtractConfig, fc):
    import ray

    # a worker's StorageError reaches the driver as itself, not as "UDF failed" (its text lost)
    ray.data.DataContext.get_current().raise_original_map_exception = True
    cpus = alive_cpus()
    n_blocks = max(1, min(plan.todo, max(4 * cpus, math.ceil(plan.todo / max(1, cfg.files_per_task)))))
    ds = ray.data.from_arrow_refs(plan.todo_refs)
    # Decoding runs in a pool of actors, one per CPU: each imports its libraries once and
    # always has its next block queued, so no CPU waits between blocks.
    return map_batches(
        ds,
        _extractor_class(fc, cfg.max_seconds, cfg.endpoint_url, cfg.output),
        batch_size=math.ceil(plan.todo / n_blocks),
        batch_format="pyarrow",
        num_cpus=1,
        **no_restarts(),
        # a fixed size: Ray Data 2.60 may cancel a still-starting actor when a pool shrinks
        compute=ray.data.ActorPoolStrategy(size=min(cpus, n_blocks), max_tasks_in_flight_per_actor=2),
    )


# --------------------------------------------------------------------------- _features.json

def features_summary(table: pa.Table) -> dict[str, Any]:
    """Aggregates of one part for ``_features.json`` (merged over every part)."""
    err = table.column("error")
    ok = table.filter(pc.is_null(err))
    labels, splits = ok.column("label").to_pylist(), ok.column("split").to_pylist()
    by_split_label: dict[str, dict] = {}
    for s, g in zip(splits, labels):
        if s:
            by_split_label.setdefault(s, {})
            by_split_label[s][g] = by_split_label[s].get(g, 0) + 1
    return {"files": table.num_rows, "ok": ok.num_rows, "errors": table.num_rows - ok.num_rows,
            "unlabeled": sum(1 for g in labels if g is None), "genres": {g for g in labels if g is not None},
            "by_label": counter(labels), "by_split_label": by_split_label,
            "errors_by_kind": counter(error_class(e) for e in err.drop_null().to_pylist()),
            "audio_s": float(pc.sum(ok.column("duration_s")).as_py() or 0.0)}


def _features_json(cfg: ExtractConfig, fc, check: dict) -> dict[str, Any]:
    s = check["summary"] or {}
    by_split_label = s.get("by_split_label", {})
    kinds = s.get("errors_by_kind", {})
    return {
        "format": "mgr-features/1",
        "mgr_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "feature_config": fc.to_dict(),
        "genres": sorted(s.get("genres", set())),
        "labels": cfg.labels,
        "split": {"ratios": list(cfg.split), "seed": cfg.seed, "group_by": cfg.group_by,
                  "official": cfg.official_split},
        "counts": {
            "files": s.get("files", 0),
            "ok": s.get("ok", 0),
            "errors": s.get("errors", 0),
            "unlabeled": s.get("unlabeled", 0),
            "by_split": {k: sum(v.values()) for k, v in sorted(by_split_label.items())},
            "by_label": dict(sorted(s.get("by_label", {}).items())),
            "by_split_label": {k: dict(sorted(v.items())) for k, v in sorted(by_split_label.items())},
            "errors_by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            "audio_hours": round(s.get("audio_s", 0.0) / 3600, 4),
        },
    }
