"""``mgr label``: batch inference of a trained model over a whole catalog, with Ray Data.

Pipeline (streaming, bounded memory)::

    uris ─map_batches(featurize, CPU tasks)─▶ float32 log-mel per track
         ─map_batches(Predictor, ActorPoolStrategy, GPU or CPU)─▶ labels rows
         ─map_batches(write parts, tasks)─▶ OUTPUT/part-*.parquet ─▶ summary rows (driver)

The waveform never leaves the task that decodes it. Parts are written whole (temporary
name + rename locally; S3 objects appear when their upload completes) under names derived
from their uris, so an interrupted run leaves no partial or duplicate rows and re-running
the same command labels only the catalog files OUTPUT lacks.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any, Callable

import pyarrow as pa

from mgr.datasets import labelset
from mgr.inference.predict import window_geometry

from mgr.io import storage
from mgr.audio.decode import DEFAULT_MAX_SECONDS
from mgr.errors import ConfigError, JobError, StorageError

__all__ = ["label_catalog", "catalog_records", "parse_actors"]


def parse_actors(text: str | None) -> tuple[int, int] | None:
    """``"2"`` → (2, 2); ``"1,4"`` → (1, 4); None → None (derived from the cluster)."""
    if text is None or text == "":
        return None
    try:
        parts = [int(p) for p in str(text).split(",")]
    except ValueError:
        raise ConfigError(f"--actors takes MIN,MAX (e.g. 1,4), got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 1 <= parts[0] <= parts[1]:
        raise ConfigError(f"--actors takes MIN,MAX with 1 <= MIN <= MAX, got {text!r}")
    return parts[0], parts[1]


def catalog_records(catalog: str, *, endpoint_url: str | None = None) -> list[dict[str, Any]]:
    """``uri``, ``track_id`` (and manifest columns) of every file of ``catalog``.

    ``catalog`` is a local folder or ``s3://`` prefix (listed for audio files), or
    ``manifest:FILE`` where FILE (CSV or Parquet, local or S3) has a ``uri`` column
    (absolute, or relative to FILE's folder), optionally ``track_id`` and any other
    columns, which are carried through into the labels as strings.

    Raises
    ------
    StorageError, LabelSourceError
        The catalog does not exist, holds no audio files, or the manifest is unusable.
    """
    from mgr.datasets.sources import track_id_from_uri

    if catalog.startswith("manifest:"):
        return _manifest_records(catalog[len("manifest:"):], endpoint_url=endpoint_url)
    fs, path = storage.filesystem(catalog, endpoint_url=endpoint_url)
    fs.invalidate_cache(path)  # a grown catalog must be listed afresh
    uris = storage.list_audio(catalog, endpoint_url=endpoint_url)
    if not uris:
        raise StorageError(f"{catalog} holds no audio files ({', '.join(storage.AUDIO_EXTENSIONS)})")
    return [{"uri": u, "track_id": track_id_from_uri(u)} for u in uris]


def _normjoin(base: str, rel: str) -> str:
    """``base`` folder + relative ``rel``, with ``..`` resolved (local path or URI)."""
    import os
    import posixpath

    if storage.is_remote(base):
        proto, rest = base.split("://", 1)
        return f"{proto}://{posixpath.normpath(posixpath.join(rest, rel))}"
    return os.path.normpath(os.path.join(os.path.abspath(base), rel))


def _manifest_records(path: str, *, endpoint_url: str | None) -> list[dict[str, Any]]:
    import io

    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from mgr.errors import LabelSourceError
    from mgr.datasets.sources import track_id_from_uri

    if not path:
        raise LabelSourceError("manifest: needs a file, e.g. manifest:s3://bucket/catalog.csv")
    raw = storage.read_bytes(path, endpoint_url=endpoint_url)
    try:
        if path.lower().endswith((".parquet", ".pq")):
            table = pq.read_table(io.BytesIO(raw))
        else:
            table = pcsv.read_csv(io.BytesIO(raw), convert_options=pcsv.ConvertOptions(
                column_types={"uri": pa.string(), "track_id": pa.string()}, strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError) as exc:
        raise LabelSourceError(f"cannot parse manifest {path}: {str(exc).splitlines()[0]}") from None
    if "uri" not in table.column_names:
        raise LabelSourceError(f"manifest {path} has no 'uri' column (columns: {table.column_names})")
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    records, seen = [], set()
    for rec in table.to_pylist():
        uri = rec["uri"]
        if not uri:
            continue
        if not (storage.is_remote(uri) or uri.startswith("/")):
            uri = _normjoin(base, uri)
        if uri in seen:
            raise LabelSourceError(f"manifest {path} lists {uri!r} more than once")
        seen.add(uri)
        out = {k: (None if v is None else str(v)) for k, v in rec.items()}
        out["uri"], out["track_id"] = uri, rec.get("track_id") or track_id_from_uri(uri)
        records.append(out)
    if not records:
        raise LabelSourceError(f"manifest {path} lists no files")
    return records


def _clear_output(output: str, existing: labelset.ExistingOutput, *, endpoint_url: str | None) -> None:
    fs, path = storage.filesystem(output, endpoint_url=endpoint_url)
    try:
        for p in existing.files:
            fs.rm(p)
        marker = path.rstrip("/") + "/" + labelset.MARKER_NAME
        if fs.exists(marker):
            fs.rm(marker)
    except OSError as exc:
        raise StorageError(f"cannot clear OUTPUT {output}: {exc}") from None


def _write_parts(batch: pa.Table, *, output: str, schema: pa.Schema, endpoint_url: str | None) -> pa.Table:
    """Writer step: one Parquet part per batch; returns the batch's summary columns."""
    if batch.num_rows:
        labelset.write_part(batch.select(schema.names).cast(schema), output, endpoint_url=endpoint_url)
    return batch.select(list(labelset.SUMMARY_COLUMNS))


#: files per block of the fused CPU stage (one part file each)
FUSED_FILES_PER_BLOCK = 16


def _fused_cpu_stage(todo, feat_kwargs, pred_kwargs, *, output, schema, endpoint_url, files_per_task):
    """CPU only: decode, model and write in one actor stage, one actor per CPU.

    Each actor loads the model once and always has its next block queued; no window ever
    goes through the object store and no CPU waits between tasks (the same shape as the
    extraction job). GPU actors keep the split stages (CPU decode tasks → GPU model).
    """
    import ray

    class _Labeler:
        def __init__(self):
            from mgr.pipelines.label_steps import Predictor

            self.predict = Predictor(**pred_kwargs)

        def __call__(self, batch: pa.Table) -> pa.Table:
            from mgr.pipelines.label_steps import featurize

            return _write_parts(self.predict(featurize(batch, **feat_kwargs)), output=output, schema=schema,
                                endpoint_url=endpoint_url)

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    per_block = max(files_per_task, FUSED_FILES_PER_BLOCK)
    n_blocks = min(len(todo), max(4 * cpus, math.ceil(len(todo) / per_block)))
    ds = ray.data.from_items(todo, override_num_blocks=n_blocks)
    return ds.map_batches(_Labeler, batch_size=None, batch_format="pyarrow", num_cpus=1,
                          compute=ray.data.ActorPoolStrategy(size=min(cpus, n_blocks), max_tasks_in_flight_per_actor=2))


def _resources(gpus_per_actor: float, cpus_per_actor: float | None,
               actors: tuple[int, int] | None) -> tuple[float, tuple[int, int]]:
    import ray

    total = ray.cluster_resources()
    cpus = float(total.get("CPU", 1))
    if cpus_per_actor is None:
        # On a small machine the model shares the cores with decoding (it costs little next
        # to it); on a cluster each actor gets a core of its own.
        cpus_per_actor = 1.0 if gpus_per_actor > 0 or cpus >= 8 else 0.0
    if actors is None:
        if gpus_per_actor > 0:
            n = max(1, int(total.get("GPU", 0) // gpus_per_actor))
        else:
            n = max(1, int(cpus // 8))
        actors = (1, n)
    return cpus_per_actor, actors


def label_catalog(
    catalog: str,
    output: str,
    *,
    model_dir: str,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
    top_k: int = 3,
    batch_size: int = 64,
    actors: tuple[int, int] | str | None = None,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float | None = None,
    per_step: bool = False,
    max_windows: int | None = None,
    min_confidence: float = 0.0,
    retry_errors: bool = False,
    overwrite: bool = False,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    files_per_task: int = 4,
    rows_per_file: int = 1000,
    address: str | None = None,
    num_cpus: int | None = None,
    endpoint_url: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Label every audio file of ``catalog`` with the model in ``model_dir`` into ``output``.

    Parameters
    ----------
    catalog : str
        Folder or ``s3://`` prefix of audio files.
    output : str
        Folder or ``s3://`` prefix of the labels dataset (one model's labels).
    model_dir : str
        Model directory (``model.pt`` + ``model.json``).
    window_seconds, hop_seconds : float, optional
        Window length and hop; default: the model's input length W and W/2.
    top_k : int
        Genres kept in ``top_genres``/``top_probs``.
    batch_size : int
        Windows per forward pass.
    actors : (int, int) or "MIN,MAX", optional
        Size range of the model actor pool (default from the cluster's GPUs/CPUs).
    gpus_per_actor : float
        GPUs per model actor; > 0 runs the model on CUDA.
    cpus_per_actor : float, optional
        CPUs reserved per model actor (default: 1 with GPUs or on >= 8 CPUs, else 0).
    per_step : bool
        Write crnn per-step distributions per window (``steps`` column).
    max_windows : int, optional
        Label at most this many windows per track, spread evenly; only their excerpts are
        decoded where the format allows seeking.
    min_confidence : float
        Tracks whose top probability is below this get ``genre = "unknown"``.
    retry_errors : bool
        Label again the files whose error was a storage/network one (``error`` starting
        with ``"storage: "``); the summary lists those that stayed broken.
    overwrite : bool
        Clear OUTPUT (even another model's labels) and relabel everything.
    max_seconds : float, optional
        Longer files get an error row.
    files_per_task, rows_per_file : int
        Files decoded per task; rows per Parquet part.
    address, num_cpus, endpoint_url
        Ray cluster (default: embedded local Ray), its CPUs, S3 endpoint.
    log : callable, optional
        Receives progress lines (default: print).

    Returns
    -------
    dict
        ``output, model_id, genres, windows, run`` (this run: files, errors, genres,
        seconds, files_per_s, audio_minutes_per_s) and ``counts`` (the whole OUTPUT).

    Raises
    ------
    ConfigError, ModelError, StorageError, JobError
        Bad options, a model that does not fit its features, an OUTPUT of another model,
        unreachable storage or cluster.
    """
    from mgr.pipelines.label_steps import check_model
    from mgr.models.modeldir import load_model_dir

    log = log or print
    if isinstance(actors, str):
        actors = parse_actors(actors)
    if int(top_k) < 1 or int(batch_size) < 1 or int(files_per_task) < 1 or int(rows_per_file) < 1:
        raise ConfigError("--top-k, --batch-size, files per task and rows per file must be at least 1")
    if max_windows is not None and int(max_windows) < 1:
        raise ConfigError(f"--max-windows must be at least 1, got {max_windows}")
    if not 0.0 <= float(min_confidence) <= 1.0:
        raise ConfigError(f"--min-confidence is a probability in [0, 1], got {min_confidence}")
    if gpus_per_actor < 0 or (cpus_per_actor is not None and cpus_per_actor < 0):
        raise ConfigError("--gpus-per-actor and --cpus-per-actor must not be negative")
    loaded = load_model_dir(model_dir, device="cpu", endpoint_url=endpoint_url)
    check_model(loaded)
    if per_step and loaded.spec["architecture"] != "crnn":
        raise ConfigError(f"--per-step needs a crnn model; {model_dir} is a {loaded.spec['architecture']}")
    cfg = loaded.feature_config
    width, hop = window_geometry(window_frames=loaded.window_frames, frames_per_second=cfg.sr / cfg.hop_length,
                                          window_seconds=window_seconds, hop_seconds=hop_seconds)

    # one writer at a time: a second run would delete the first one's temporary parts
    with storage.output_lock(output, command="mgr label", endpoint_url=endpoint_url):
        existing = labelset.read_existing(output, endpoint_url=endpoint_url, clean=True)
        foreign = set(existing.model_ids)
        if existing.marker and existing.marker.get("model_id"):
            foreign.add(existing.marker["model_id"])
        foreign.discard(loaded.model_id)
        if foreign and not overwrite:
            raise ConfigError(f"{output} holds labels of model {sorted(foreign)[0]}, not {loaded.model_id}: "
                              "use another OUTPUT, or --overwrite to replace them")
        records = catalog_records(catalog, endpoint_url=endpoint_url)  # before anything in OUTPUT changes
        extras = [k for k in records[0] if k not in ("uri", "track_id")]
        schema = labelset.labels_schema(loaded.genres, model_id=loaded.model_id, extra_columns=extras)
        if overwrite:
            _clear_output(output, existing, endpoint_url=endpoint_url)
            existing = labelset.read_existing(output, endpoint_url=endpoint_url)
        elif existing.columns and existing.columns != schema.names:
            raise ConfigError(f"{output} was written with the columns {existing.columns}, this catalog gives "
                              f"{schema.names}: use another OUTPUT, or --overwrite")
        retried: set[str] = set()
        if retry_errors and existing.retryable:
            for part, uris in existing.retryable.items():
                labelset.drop_rows(output, part, uris, endpoint_url=endpoint_url)
                retried.update(uris)
            existing = labelset.read_existing(output, endpoint_url=endpoint_url)
        todo = [r for r in records if r["uri"] not in existing.uris]
        log(f"{len(records)} file(s) in {catalog}; {len(records) - len(todo)} already labeled in {output}; "
            f"{len(todo)} to label with {loaded.model_id} (windows {width} frames, hop {hop})")
        t0 = time.perf_counter()
        run = {"files": 0, "errors": 0, "error_uris": [], "unknown": 0, "genres": {}, "audio_minutes": 0.0,
               "audio_minutes_decoded": 0.0, "audio_minutes_skipped": 0.0, "error_examples": []}
        if todo:
            _drop_marker(output, endpoint_url=endpoint_url)
            run = _run_pipeline(todo, output, model_dir=model_dir, schema=schema, feature_config=cfg.to_dict(),
                                width=width, hop=hop, top_k=top_k, batch_size=batch_size, actors=actors,
                                gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor, per_step=per_step,
                                max_windows=max_windows, min_confidence=min_confidence, max_seconds=max_seconds,
                                files_per_task=files_per_task, rows_per_file=rows_per_file, address=address,
                                num_cpus=num_cpus, endpoint_url=endpoint_url)
        seconds = time.perf_counter() - t0
        broken = sorted(retried & set(run.pop("error_uris")))
        run.update(retried=len(retried), still_broken=len(broken), still_broken_examples=broken[:5])
        timed = run["files"] and seconds > 0
        run.update(seconds=round(seconds, 3), files_skipped_already_done=len(records) - len(todo),
                   files_per_s=round(run["files"] / seconds, 3) if timed else None,
                   audio_minutes_per_s=round(run["audio_minutes"] / seconds, 3) if timed else None)
        after = labelset.read_existing(output, endpoint_url=endpoint_url)
        missing = len({r["uri"] for r in records} - after.uris)
        counts = {"files": len(after.uris), "errors": after.errors, "catalog_files": len(records), "missing": missing}
        summary = {"output": output, "catalog": catalog, "model_id": loaded.model_id, "genres": loaded.genres,
                   "windows": {"frames": width, "hop_frames": hop, "seconds": round(width * cfg.hop_length / cfg.sr, 3),
                               "hop_seconds": round(hop * cfg.hop_length / cfg.sr, 3)},
                   "per_step": bool(per_step), "max_windows": max_windows, "min_confidence": min_confidence,
                   "run": run, "counts": counts, "complete": missing == 0}
        if missing == 0:
            labelset.write_marker(output, {**summary, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                                  endpoint_url=endpoint_url)
        return summary


def _drop_marker(output: str, *, endpoint_url: str | None) -> None:
    fs, path = storage.filesystem(storage.join(output, labelset.MARKER_NAME), endpoint_url=endpoint_url)
    try:
        if fs.exists(path):
            fs.rm(path)
    except OSError as exc:
        raise StorageError(f"cannot update {output}: {exc}") from None


def _run_pipeline(todo: list[dict], output: str, *, model_dir: str, schema: pa.Schema, feature_config: dict,
                  width: int, hop: int, top_k: int, batch_size: int, actors, gpus_per_actor: float,
                  cpus_per_actor: float | None, per_step: bool, max_windows: int | None,
                  min_confidence: float, max_seconds: float | None, files_per_task: int,
                  rows_per_file: int, address: str | None, num_cpus: int | None,
                  endpoint_url: str | None) -> dict[str, Any]:
    import ray

    from mgr.pipelines.label_steps import Predictor, featurize
    from mgr.pipelines.runtime import ray_session

    with ray_session(address=address, num_cpus=num_cpus, endpoint_url=endpoint_url):
        # a worker's StorageError reaches the driver as itself, not as "UDF failed" (its text lost)
        ray.data.DataContext.get_current().raise_original_map_exception = True
        cpa, (amin, amax) = _resources(gpus_per_actor, cpus_per_actor, actors)
        feat_kwargs = {"feature_config": feature_config, "max_seconds": max_seconds, "width": width, "hop": hop,
                       "max_windows": max_windows, "endpoint_url": endpoint_url}
        pred_kwargs = {"model_dir": model_dir, "schema": schema, "width": width, "hop": hop, "top_k": top_k,
                       "batch_size": batch_size, "per_step": per_step,
                       "device": "cuda" if gpus_per_actor > 0 else "cpu", "torch_threads": max(1, int(cpa)),
                       "max_windows": max_windows, "min_confidence": min_confidence, "endpoint_url": endpoint_url}
        if gpus_per_actor <= 0 and actors is None and cpus_per_actor is None:
            ds = _fused_cpu_stage(todo, feat_kwargs, pred_kwargs, output=output, schema=schema,
                                  endpoint_url=endpoint_url, files_per_task=files_per_task)
        else:
            n_blocks = max(1, min(len(todo), math.ceil(len(todo) / files_per_task)))
            ds = ray.data.from_items(todo, override_num_blocks=n_blocks)
            ds = ds.map_batches(featurize, batch_size=files_per_task, batch_format="pyarrow", num_cpus=1,
                                fn_kwargs=feat_kwargs)
            ds = ds.map_batches(
                Predictor, batch_size=files_per_task, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(min_size=amin, max_size=amax),
                num_cpus=cpa, num_gpus=gpus_per_actor or None, fn_constructor_kwargs=pred_kwargs,
            )
            ds = ds.map_batches(_write_parts, batch_size=rows_per_file, batch_format="pyarrow", num_cpus=0.25,
                                fn_kwargs={"output": output, "schema": schema, "endpoint_url": endpoint_url})
        files = errors = 0
        minutes = decoded = 0.0
        hist: collections.Counter = collections.Counter()
        examples: list[str] = []
        error_uris: list[str] = []
        failed = None
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for uri, genre, dur, dec, err in zip(*(batch.column(c).to_pylist() for c in labelset.SUMMARY_COLUMNS)):
                    files += 1
                    if err is not None:
                        errors += 1
                        error_uris.append(uri)
                        if len(examples) < 5:
                            examples.append(f"{uri}: {err}")
                    else:
                        hist[genre] += 1
                        minutes += (dur or 0.0) / 60.0
                        decoded += (dec or 0.0) / 60.0
        except Exception as exc:  # noqa: BLE001 - a storage, model or cluster failure, not a file's
            from mgr.errors import worker_cause

            failed = f"labeling into {output} failed: {worker_cause(exc)}; re-run the command to resume"
        if failed:
            import gc

            # free the failed dataset's actors (and their CPUs) now, not when the chain is collected
            del ds
            gc.collect()
            raise JobError(failed)
    if files != len(todo):
        raise JobError(f"labeling wrote {files} rows for {len(todo)} files; re-run the command to finish")
    return {"files": files, "errors": errors, "error_uris": error_uris, "unknown": hist.get(labelset.UNKNOWN, 0),
            "genres": dict(hist.most_common()), "audio_minutes": round(minutes, 3),
            "audio_minutes_decoded": round(decoded, 3), "audio_minutes_skipped": round(max(0.0, minutes - decoded), 3),
            "error_examples": examples}
