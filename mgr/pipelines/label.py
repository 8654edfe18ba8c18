"""``mgr label``: batch inference of a trained model over a whole catalog, with Ray Data.

Pipeline (streaming, bounded memory; the plan and the check are :mod:`mgr.pipelines.output`)::

    catalog listing / manifest ─(planner: hash-partitioned, minus OUTPUT's uris)─▶ work blocks
        ─map_batches(decode + model + write part, one actor per CPU)─▶ per-block totals (driver)

GPU runs split the stage: CPU decode tasks → GPU model actors → part-writing tasks. The
waveform never leaves the task that decodes it. Parts are written whole under names derived
from their uris, so an interrupted run leaves no partial or duplicate rows and re-running
the same command labels only the catalog files OUTPUT lacks.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from mgr.datasets import labelset
from mgr.errors import ConfigError, JobError, LabelSourceError, StorageError
from mgr.inference.predict import window_geometry
from mgr.pipelines.catalog import audio_rows, counter
from mgr.pipelines.catalog_config import LabelConfig, parse_actors
from mgr.pipelines.output import (DatasetOutput, Listing, Manifest, Plan, alive_cpus, map_batches, no_restarts,
                                  totals_row)
from mgr.pipelines.progress import Progress
from mgr.pipelines.report import render_report, report_summary
from mgr.reporting.labels_report import COLUMNS as REPORT_COLUMNS

__all__ = ["label_catalog", "label_totals", "parse_actors", "LabelConfig"]

#: files per block of the fused CPU stage (one part file each)
FUSED_FILES_PER_BLOCK = 16


def label_catalog(cfg: LabelConfig, *, log: Callable[[str], None] | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Label every audio file of ``cfg.catalog`` with the model ``cfg.model_dir`` into ``cfg.output``.

    Parameters
    ----------
    cfg : LabelConfig
        The whole job (see :class:`~mgr.pipelines.catalog_config.LabelConfig`).
    log : callable, optional
        Receives the plan line (default: print).
    progress : bool
        Print the live progress line (stderr).

    Returns
    -------
    dict
        ``output, catalog, model_id, genres, windows, run`` (this run: files, errors, genres,
        error_kinds, seconds, files_per_s, audio_minutes_per_s) and ``counts`` (the whole OUTPUT).

    Raises
    ------
    ConfigError, ModelError, StorageError, JobError
        Bad options, a model that does not fit its features, an OUTPUT of another model,
        unreachable storage or cluster.
    """
    from mgr.pipelines.runtime import ray_session

    log = log or print
    loaded, width, hop = _load_model(cfg)
    if not cfg.catalog.exists():
        if cfg.manifest:
            raise LabelSourceError(f"cannot read manifest: {cfg.catalog.uri} not found")
        raise StorageError(f"input {cfg.catalog.uri} does not exist", retryable=False)
    out = DatasetOutput(cfg.output, command="mgr label", marker=labelset.MARKER_NAME,
                        read_columns=("uri", "model_id", "error"), check_columns=REPORT_COLUMNS,
                        summarize=report_summary())
    with ray_session(address=cfg.address, num_cpus=cfg.num_cpus, endpoint_url=cfg.endpoint_url), out.open():
        work = Manifest(cfg.catalog) if cfg.manifest else Listing(cfg.catalog, audio_rows)
        plan = out.plan(work, retry_errors=cfg.retry_errors, ignore_output=cfg.overwrite)
        _check_work(cfg, plan)
        extras = [c for c in plan.work_columns if c not in ("uri", "track_id")]
        schema = labelset.labels_schema(loaded.genres, model_id=loaded.model_id, extra_columns=extras)
        before = 0  # rows OUTPUT holds before this run writes
        if cfg.overwrite:
            out.clear()
        else:
            _refuse_foreign(cfg, plan, out.read_marker(), loaded.model_id, schema)
            before = plan.output["rows"] - (out.drop_retried() if plan.retry else 0)
        log(f"{plan.work} file(s) in {cfg.catalog_text}; {plan.done} already labeled in {cfg.output.uri}; "
            f"{plan.todo} to label with {loaded.model_id} (windows {width} frames, hop {hop})")
        t0 = time.perf_counter()
        totals: dict[str, Any] = {}
        if plan.todo:
            out.drop_marker()
            bar = Progress("labeled", plan.todo, enabled=progress)
            totals = out.write(plan, work, lambda p: _dataset(p, cfg, loaded, schema, width, hop),
                               on_totals=lambda t: bar.update(files=t["files"], errors=t["errors"],
                                                              audio_s=t["audio_s"]),
                               what=f"labeling into {cfg.output.uri} failed")
            bar.close()
        seconds = time.perf_counter() - t0
        check = out.complete()
        summary = _summary(cfg, loaded, plan, totals, check, seconds, width, hop, before)
        if summary["complete"]:
            marker = {**summary, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            out.write_marker(marker)
            # the run's report, OUTPUT/_report/, from the aggregate the check computed
            summary["report"] = render_report(check["summary"], labels=cfg.output, marker=marker)["index"]
    return summary


def _load_model(cfg: LabelConfig):
    """The model (checked against its feature preset) and the window geometry (W, H)."""
    from mgr.models.modeldir import load_model_dir
    from mgr.pipelines.label_steps import check_model

    loaded = load_model_dir(cfg.model_dir, device="cpu")
    check_model(loaded)
    if cfg.per_step and loaded.spec["architecture"] != "crnn":
        raise ConfigError(f"--per-step needs a crnn model; {cfg.model_dir.uri} is a {loaded.spec['architecture']}")
    fc = loaded.feature_config
    width, hop = window_geometry(window_frames=loaded.window_frames, frames_per_second=fc.sr / fc.hop_length,
                                 window_seconds=cfg.window_seconds, hop_seconds=cfg.hop_seconds)
    return loaded, width, hop


def _check_work(cfg: LabelConfig, plan: Plan) -> None:
    if plan.work:
        return
    if cfg.manifest:
        raise LabelSourceError(f"manifest {cfg.catalog.uri} lists no files")
    from mgr.io.location import AUDIO_EXTENSIONS

    raise StorageError(f"{cfg.catalog.uri} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})")


def _refuse_foreign(cfg: LabelConfig, plan: Plan, marker: dict | None, model_id: str, schema: pa.Schema) -> None:
    """One OUTPUT holds one model's labels, with one set of columns."""
    foreign = set(plan.output["model_ids"])
    if marker and marker.get("model_id"):
        foreign.add(marker["model_id"])
    foreign.discard(model_id)
    if foreign:
        raise ConfigError(f"{cfg.output.uri} holds labels of model {sorted(foreign)[0]}, not {model_id}: "
                          "use another OUTPUT, or --overwrite to replace them")
    columns = plan.output["columns"]
    if columns and columns != schema.names:
        raise ConfigError(f"{cfg.output.uri} was written with the columns {columns}, this catalog gives "
                          f"{schema.names}: use another OUTPUT, or --overwrite")


def label_totals(table: pa.Table) -> dict[str, Any]:
    """The small totals of one written block: counts, genre histogram, error classes, a few examples."""
    err = table.column("error")
    ok = table.filter(pc.is_null(err))
    bad = table.filter(pc.is_valid(err))
    genres = pc.value_counts(ok.column("genre")).to_pylist() if ok.num_rows else []
    totals = {"files": table.num_rows, "errors": bad.num_rows,
              "genres": {g["values"]: g["counts"] for g in genres if g["values"] is not None},
              "error_kinds": counter(labelset.error_class(e) for e in bad.column("error").to_pylist()),
              "audio_s": float(pc.sum(ok.column("duration_s")).as_py() or 0.0),
              "decoded_s": float(pc.sum(ok.column("decoded_s")).as_py() or 0.0),
              "error_examples": [f"{u}: {e}" for u, e in zip(bad.column("uri").slice(0, 3).to_pylist(),
                                                             bad.column("error").slice(0, 3).to_pylist())],
              "still_broken": 0, "still_broken_examples": [], "retried": 0}
    if "retry" in table.column_names:
        retried = table.filter(table.column("retry"))
        broken = retried.filter(pc.is_valid(retried.column("error")))
        totals.update(retried=retried.num_rows, still_broken=broken.num_rows,
                      still_broken_examples=broken.column("uri").slice(0, 3).to_pylist())
    return totals


def _write_block(batch: pa.Table, *, output, schema: pa.Schema) -> pa.Table:
    """Writer step: one Parquet part per batch; returns the batch's totals (one row)."""
    if batch.num_rows:
        labelset.write_part(batch.select(schema.names).cast(schema), output)
    return totals_row(label_totals(batch))


def _dataset(plan: Plan, cfg: LabelConfig, loaded, schema: pa.Schema, width: int, hop: int):
    """The labeling pipeline over the plan's work blocks; its rows are per-block totals."""
    import ray

    from mgr.pipelines.label_steps import Predictor, featurize

    # a worker's StorageError reaches the driver as itself, not as "UDF failed" (its text lost)
    ray.data.DataContext.get_current().raise_original_map_exception = True
    cpus = alive_cpus()
    cpa, (amin, amax) = _resources(cfg, cpus)
    feat_kwargs = {"feature_config": loaded.feature_config.to_dict(), "max_seconds": cfg.max_seconds,
                   "width": width, "hop": hop, "max_windows": cfg.max_windows, "endpoint_url": cfg.endpoint_url}
    pred_kwargs = {"model_dir": cfg.model_dir, "schema": schema, "width": width, "hop": hop, "top_k": cfg.top_k,
                   "batch_size": cfg.batch_size, "per_step": cfg.per_step,
                   "device": "cuda" if cfg.gpus_per_actor > 0 else "cpu", "torch_threads": max(1, int(cpa)),
                   "max_windows": cfg.max_windows, "min_confidence": cfg.min_confidence}
    ds = ray.data.from_arrow_refs(plan.todo_refs)
    # Bounded restarts: an actor whose node is gone fails the run instead of waiting forever
    # for a node; DatasetOutput.write then re-plans what is left on the nodes that remain.
    if cfg.gpus_per_actor <= 0 and cfg.actors is None and cfg.cpus_per_actor is None:
        per_block = max(cfg.files_per_task, FUSED_FILES_PER_BLOCK)
        n_blocks = min(plan.todo, max(4 * cpus, math.ceil(plan.todo / per_block)))
        output = cfg.output

        class _Labeler:
            """CPU only: decode, model and write in one actor, one per CPU (model loaded once)."""

            def __init__(self):
                self.predict = Predictor(**pred_kwargs)

            def __call__(self, batch: pa.Table) -> pa.Table:
                return _write_block(self.predict(featurize(batch, **feat_kwargs)), output=output, schema=schema)

        return map_batches(ds, _Labeler, batch_size=math.ceil(plan.todo / n_blocks), batch_format="pyarrow",
                              num_cpus=1, **no_restarts(),
                              compute=ray.data.ActorPoolStrategy(size=min(cpus, n_blocks),
                                                                 max_tasks_in_flight_per_actor=2))
    ds = ds.map_batches(featurize, batch_size=cfg.files_per_task, batch_format="pyarrow", num_cpus=1,
                        fn_kwargs=feat_kwargs)
    ds = map_batches(ds, Predictor, batch_size=cfg.files_per_task, batch_format="pyarrow",
                        compute=ray.data.ActorPoolStrategy(min_size=amin, max_size=amax), **no_restarts(),
                        num_cpus=cpa, num_gpus=cfg.gpus_per_actor or None, fn_constructor_kwargs=pred_kwargs)
    return ds.map_batches(_write_block, batch_size=cfg.rows_per_file, batch_format="pyarrow", num_cpus=0.25,
                          fn_kwargs={"output": cfg.output, "schema": schema})


def _resources(cfg: LabelConfig, cpus: int) -> tuple[float, tuple[int, int]]:
    import ray

    cpus_per_actor, actors = cfg.cpus_per_actor, cfg.actors
    if cpus_per_actor is None:
        # On a small machine the model shares the cores with decoding (it costs little next
        # to it); on a cluster each actor gets a core of its own.
        cpus_per_actor = 1.0 if cfg.gpus_per_actor > 0 or cpus >= 8 else 0.0
    if actors is None:
        if cfg.gpus_per_actor > 0:
            n = max(1, int(ray.cluster_resources().get("GPU", 0) // cfg.gpus_per_actor))
        else:
            n = max(1, int(cpus // 8))
        actors = (1, n)
    return cpus_per_actor, actors


def _summary(cfg: LabelConfig, loaded, plan: Plan, totals: dict, check: dict, seconds: float,
             width: int, hop: int, before: int) -> dict[str, Any]:
    if check["duplicates"]:
        raise JobError(f"OUTPUT {cfg.output.uri} holds {check['duplicates']} duplicated row(s) (was it written by "
                       "another run at the same time?); re-run with --overwrite")
    if check["missing"]:
        raise JobError(f"labeling left {check['missing']} catalog file(s) out of {cfg.output.uri} (e.g. "
                       f"{check['missing_examples'][:1]}); re-run the command to finish")
    # rows this run added (exact even when a lost node took some blocks' totals with it)
    files = max(int(totals.get("files", 0)), check["distinct"] - before)
    fc = loaded.feature_config
    minutes = totals.get("audio_s", 0.0) / 60.0
    decoded = totals.get("decoded_s", 0.0) / 60.0
    genres = dict(sorted(totals.get("genres", {}).items(), key=lambda kv: (-kv[1], kv[0])))
    timed = files and seconds > 0
    run = {"files": files, "errors": int(totals.get("errors", 0)), "unknown": genres.get(labelset.UNKNOWN, 0),
           "genres": genres, "error_kinds": dict(sorted(totals.get("error_kinds", {}).items(), key=lambda kv: -kv[1])),
           "error_examples": totals.get("error_examples", []), "audio_minutes": round(minutes, 3),
           "audio_minutes_decoded": round(decoded, 3), "audio_minutes_skipped": round(max(0.0, minutes - decoded), 3),
           "retried": plan.retry, "still_broken": int(totals.get("still_broken", 0)),
           "still_broken_examples": totals.get("still_broken_examples", []), "seconds": round(seconds, 3),
           "files_skipped_already_done": plan.done,
           "files_per_s": round(files / seconds, 3) if timed else None,
           "audio_minutes_per_s": round(minutes / seconds, 3) if timed else None}
    counts = {"files": check["distinct"], "errors": check["errors"], "catalog_files": plan.work,
              "missing": check["missing"]}
    return {"output": cfg.output.uri, "catalog": cfg.catalog_text, "model_id": loaded.model_id,
            "genres": loaded.genres,
            "windows": {"frames": width, "hop_frames": hop, "seconds": round(width * fc.hop_length / fc.sr, 3),
                        "hop_seconds": round(hop * fc.hop_length / fc.sr, 3)},
            "per_step": bool(cfg.per_step), "max_windows": cfg.max_windows, "min_confidence": cfg.min_confidence,
            "temperature": float(loaded.temperature), "run": run, "counts": counts,
            "complete": check["missing"] == 0}
