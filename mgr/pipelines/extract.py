"""The extraction job: audio files → log-mel features dataset (Parquet), on Ray Data.

The driver lists INPUT and builds one small record per file (uri, labels, split); Ray Data
spreads the records over tasks that read, decode and analyse each file in place
(:mod:`mgr.pipelines.extract_step`) and write Parquet. Re-running on the same OUTPUT extracts only
the files not yet there; ``_features.json`` is written last, once every input is accounted for.
"""

from __future__ import annotations

import datetime as _dt
import gc
import math
import time
from collections import Counter
from typing import Any

import pyarrow as pa

from mgr import __version__

from mgr.io import storage
from mgr.audio.decode import DEFAULT_MAX_SECONDS
from mgr.config import get_preset
from mgr.errors import JobError, StorageError, worker_cause
from mgr.datasets.featureset import MANIFEST_NAME, read_table, write_manifest
from mgr.io.parts import list_parts, write_part
from mgr.datasets.sources import parse_labels_spec, records_for
from mgr.datasets.sources.split import assign_splits, parse_ratios

__all__ = ["extract", "error_kind", "balanced_blocks"]

#: files per Ray task: large enough to amortise task overhead, small enough to balance
FILES_PER_TASK = 32


def error_kind(message: str) -> str:
    """A short class of an error message for summaries: the text before any detail."""
    return message.split(" (", 1)[0].split(":", 1)[0].strip()


def _existing_uris(output: str, *, endpoint_url: str | None) -> tuple[set[str], bool]:
    """Uris already extracted into OUTPUT, and whether its metadata marks it finished
    (leftover temporary files of a crash are removed)."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(output, endpoint_url=endpoint_url)
    try:
        files, tmp = list_parts(fs, path)
        for f in tmp:
            fs.rm(f)
        finished = fs.exists(storage.join(path, MANIFEST_NAME))
    except OSError as exc:
        raise StorageError(f"cannot list OUTPUT {output}: {exc}") from None
    uris: set[str] = set()
    for f in files:
        try:
            uris.update(pq.read_table(f, columns=["uri"], filesystem=fs).column("uri").to_pylist())
        except (OSError, pa.ArrowInvalid):
            fs.rm(f)  # not a complete Parquet file: its rows are redone
    return uris, finished


def _clear(output: str, *, endpoint_url: str | None) -> None:
    fs, path = storage.filesystem(output, endpoint_url=endpoint_url)
    if fs.exists(path):
        for f in fs.find(path):
            if f.endswith(".parquet") or f.endswith(MANIFEST_NAME):
                fs.rm(f)


def extract(
    input_uri: str,
    output_uri: str,
    *,
    labels: str = "none",
    preset: str = "paper",
    seed: int = 0,
    split: str | tuple[float, float, float] = (0.7, 0.2, 0.1),
    group_by: str | None = None,
    subset: str | None = None,
    official_split: bool = False,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    overwrite: bool = False,
    files_per_task: int = FILES_PER_TASK,
    address: str | None = None,
    num_cpus: int | None = None,
    endpoint_url: str | None = None,
) -> dict[str, Any]:
    """Extract log-mel features of every audio file under ``input_uri`` into ``output_uri``.

    Parameters
    ----------
    input_uri : str
        Folder or ``s3://bucket/prefix`` of audio files (found by extension).
    output_uri : str
        Folder or ``s3://`` prefix of the features dataset.
    labels : str
        ``folder``, ``fma:TRACKS_CSV``, ``manifest:FILE`` or ``none``.
    preset : str
        Feature preset (``paper``: the reference code's analysis).
    seed, split, group_by : 
        Seeded train/val/test assignment (ratios ``"0.7,0.2,0.1"``); ``group_by="artist"``
        keeps an artist within one split.
    subset : {None, "small", "medium", "large"}
        FMA subset to label (other tracks keep ``label`` null).
    official_split : bool
        Use the split the source defines (FMA's official one) instead of a seeded one.
    max_seconds : float or None
        Files longer than this get an ``error`` instead of features.
    overwrite : bool
        Clear OUTPUT first; otherwise a re-run extracts only the files not yet in OUTPUT.
    files_per_task : int
        Files handled by one Ray task.
    address, num_cpus : 
        Ray cluster address (None: embedded local Ray) and local CPUs.
    endpoint_url : str, optional
        S3 endpoint for ``s3://`` locations.

    Returns
    -------
    dict
        The ``_features.json`` content plus ``seconds`` and ``files_per_s`` of this run.
    """
    cfg = get_preset(preset)
    ratios = parse_ratios(split)
    kind, _ = parse_labels_spec(labels)
    started = time.time()
    listed = storage.list_audio_sizes(input_uri, endpoint_url=endpoint_url)
    sizes = dict(listed)
    uris = [u for u, _ in listed]
    if not uris:
        raise StorageError(f"no audio files found under {input_uri} (extensions: {', '.join(storage.AUDIO_EXTENSIONS)})")
    records = records_for(labels, uris, subset=subset, endpoint_url=endpoint_url, input_uri=input_uri)
    keep_source = official_split or kind == "manifest"
    assign_splits(records, ratios=ratios, seed=seed, group_by=group_by, keep_source_split=keep_source)

    # one writer at a time: two runs would both extract the missing files (duplicate rows)
    with storage.output_lock(output_uri, command="mgr extract", endpoint_url=endpoint_url):
        if overwrite:
            _clear(output_uri, endpoint_url=endpoint_url)
        done, finished = _existing_uris(output_uri, endpoint_url=endpoint_url)
        todo = [r for r in records if r["uri"] not in done]

        if todo:
            if finished:  # the old features.json no longer describes OUTPUT until this run ends
                _drop_manifest(output_uri, endpoint_url=endpoint_url)
            _run_pipeline(todo, output_uri, sizes=sizes, cfg=cfg, max_seconds=max_seconds,
                          files_per_task=files_per_task, address=address, num_cpus=num_cpus,
                          endpoint_url=endpoint_url)
            # the workers wrote new files: a listing cached before the run must not hide them
            fs_out, out_path = storage.filesystem(output_uri, endpoint_url=endpoint_url)
            fs_out.invalidate_cache(out_path)
        elapsed = time.time() - started
        manifest = _finish(records, output_uri, cfg=cfg, labels=labels, seed=seed, ratios=ratios,
                           group_by=group_by, official_split=official_split, endpoint_url=endpoint_url)
        manifest["run"] = {
            "files_extracted": len(todo),
            "files_skipped_already_done": len(records) - len(todo),
            "seconds": round(elapsed, 3),
            "files_per_s": round(len(todo) / elapsed, 3) if elapsed > 0 else None,
        }
        write_manifest(output_uri, manifest, endpoint_url=endpoint_url)
    return manifest


def _drop_manifest(output: str, *, endpoint_url: str | None) -> None:
    fs, path = storage.filesystem(storage.join(output, MANIFEST_NAME), endpoint_url=endpoint_url)
    try:
        fs.rm(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot update {output}: {exc}") from None


#: decoding cost per byte relative to PCM (compressed formats hold more audio per byte)
_COST_PER_BYTE = {".mp3": 10.0, ".ogg": 10.0, ".oga": 10.0, ".opus": 12.0, ".m4a": 10.0, ".flac": 2.0}


def balanced_blocks(records: list[dict], sizes: dict[str, int], n_blocks: int) -> list[list[dict]]:
    """Split ``records`` into ``n_blocks`` blocks of about equal decoding work.

    Longest-processing-time-first: files sorted by estimated cost (size × a per-format
    factor) go one by one to the block with the least work so far, so one block of long
    songs does not keep a single worker busy while the others idle at the end.
    """
    import heapq
    import os

    def cost(rec: dict) -> float:
        ext = os.path.splitext(rec["uri"])[1].lower()
        return max(1, sizes.get(rec["uri"], 0)) * _COST_PER_BYTE.get(ext, 1.0)

    n_blocks = max(1, min(n_blocks, len(records)))
    heap = [(0.0, i) for i in range(n_blocks)]
    blocks: list[list[dict]] = [[] for _ in range(n_blocks)]
    for rec in sorted(records, key=cost, reverse=True):
        load, i = heapq.heappop(heap)
        blocks[i].append(rec)
        heapq.heappush(heap, (load + cost(rec), i))
    return [b for b in blocks if b]


def _extractor_class(cfg, max_seconds, endpoint_url, output):
    """The actor class, with its settings bound in the class (no constructor arguments: Ray
    would keep those in the object store and warn that a restarted actor may lose them)."""

    class _Extractor:
        """Actor: decodes and analyses a block of records and writes them as one part file."""

        def __init__(self):
            from mgr.pipelines.extract_step import extract_rows

            self.run = extract_rows

        def __call__(self, batch: pa.Table) -> pa.Table:
            import json

            done, errors = [], []
            for text in batch.column("records").to_pylist():
                table = self.run(json.loads(text), cfg=cfg, max_seconds=max_seconds, endpoint_url=endpoint_url)
                write_part(table, output, endpoint_url=endpoint_url)
                done.append(table.num_rows)
                errors.append(table.num_rows - table.column("error").null_count)
            return pa.table({"files": done, "errors": errors})

    return _Extractor


def _run_pipeline(todo, output_uri, *, sizes, cfg, max_seconds, files_per_task, address, num_cpus, endpoint_url):
    import json

    import ray

    from mgr.pipelines.runtime import ray_session

    with ray_session(address=address, num_cpus=num_cpus, endpoint_url=endpoint_url):
        # a worker's StorageError reaches the driver as itself, not as "UDF failed" (its text lost)
        ray.data.DataContext.get_current().raise_original_map_exception = True
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        n_blocks = max(4 * cpus, math.ceil(len(todo) / max(1, files_per_task)))
        blocks = balanced_blocks(todo, sizes, n_blocks)
        items = [{"records": json.dumps(b)} for b in blocks]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        # Decoding runs in a pool of actors, one per CPU: each imports its libraries once and
        # always has its next block queued, so no CPU waits between blocks.
        ds = ds.map_batches(
            _extractor_class(cfg, max_seconds, endpoint_url, output_uri),
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=1,
            # a fixed size: Ray Data 2.60 may cancel a still-starting actor when a pool shrinks
            compute=ray.data.ActorPoolStrategy(size=min(cpus, len(items)), max_tasks_in_flight_per_actor=2),
        )
        failed = None
        try:
            for _ in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                pass
        except Exception as exc:  # noqa: BLE001 - a storage or cluster failure, not a file's
            failed = f"extraction failed while writing {output_uri}: {worker_cause(exc)}"
        if failed:
            # The failed dataset's actors keep their CPUs until it is collected (the exception
            # chain would hold it): free them now so a later job on this Ray is not starved.
            del ds
            gc.collect()
            raise JobError(failed)


def _finish(records, output_uri, *, cfg, labels, seed, ratios, group_by, official_split, endpoint_url):
    """Check every input is in OUTPUT exactly once, then build ``_features.json``."""
    table = read_table(output_uri, columns=["uri", "label", "split", "error", "duration_s"], endpoint_url=endpoint_url)
    counts = Counter(table.column("uri").to_pylist())
    expected = {r["uri"] for r in records}
    dupes = [u for u, c in counts.items() if c > 1]
    missing = expected - set(counts)
    if dupes or missing:
        raise JobError(
            f"OUTPUT {output_uri} is inconsistent: {len(missing)} input file(s) missing, {len(dupes)} duplicated "
            "(was it written by another run at the same time?); re-run with --overwrite"
        )
    rows = table.to_pylist()
    ok = [r for r in rows if not r["error"]]
    genres = sorted({r["label"] for r in ok if r["label"] is not None})
    by_split: dict[str, Counter] = {}
    for r in ok:
        if r["split"]:
            by_split.setdefault(r["split"], Counter())[r["label"]] += 1
    errors = Counter(error_kind(r["error"]) for r in rows if r["error"])
    return {
        "format": "mgr-features/1",
        "mgr_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "feature_config": cfg.to_dict(),
        "genres": genres,
        "labels": labels,
        "split": {"ratios": list(ratios), "seed": seed, "group_by": group_by, "official": official_split},
        "counts": {
            "files": len(rows),
            "ok": len(ok),
            "errors": sum(errors.values()),
            "unlabeled": sum(1 for r in ok if r["label"] is None),
            "by_split": {s: sum(c.values()) for s, c in sorted(by_split.items())},
            "by_label": dict(sorted(Counter(r["label"] for r in ok if r["label"] is not None).items())),
            "by_split_label": {s: dict(sorted(c.items())) for s, c in sorted(by_split.items())},
            "errors_by_kind": dict(errors.most_common()),
            "audio_hours": round(sum(r["duration_s"] or 0 for r in ok) / 3600, 4),
        },
    }
