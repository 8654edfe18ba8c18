"""The extraction job: audio files → log-mel features dataset (Parquet), on Ray Data.

The driver lists INPUT and builds one small record per file (uri, labels, split); Ray Data
spreads the records over tasks that read, decode and analyse each file in place
(:mod:`mgr.extract_step`) and write Parquet. Re-running on the same OUTPUT extracts only
the files not yet there; ``features.json`` is written last, once every input is accounted for.
"""

from __future__ import annotations

import datetime as _dt
import math
import random
import time
from collections import Counter
from typing import Any

import pyarrow as pa

from mgr import __version__, storage
from mgr.audio import DEFAULT_MAX_SECONDS
from mgr.config import get_preset
from mgr.errors import JobError, MgrError, StorageError
from mgr.featureset import MANIFEST_NAME, read_table, write_manifest
from mgr.sources import parse_labels_spec, records_for
from mgr.sources.split import assign_splits, parse_ratios

__all__ = ["extract", "error_kind", "pyarrow_filesystem"]

#: files per Ray task: large enough to amortise task overhead, small enough to balance
FILES_PER_TASK = 16


def pyarrow_filesystem(uri: str, *, endpoint_url: str | None = None):
    """``(pyarrow filesystem or None, path)`` for Ray Data's readers and writers."""
    if not storage.is_remote(uri):
        return None, storage.filesystem(uri)[1]
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = storage.filesystem(uri, endpoint_url=endpoint_url)
    return PyFileSystem(FSSpecHandler(fs)), path


def error_kind(message: str) -> str:
    """A short class of an error message for summaries: the text before any detail."""
    return message.split(" (", 1)[0].split(":", 1)[0].strip()


def _existing_uris(output: str, *, endpoint_url: str | None) -> tuple[set[str], bool]:
    """Uris already extracted into OUTPUT, and whether features.json marks it finished."""
    fs, path = storage.filesystem(output, endpoint_url=endpoint_url)
    try:
        if not fs.exists(path):
            return set(), False
        files = [p for p in fs.find(path) if p.endswith(".parquet")]
        finished = fs.exists(storage.join(path, MANIFEST_NAME))
    except OSError as exc:
        raise StorageError(f"cannot list OUTPUT {output}: {exc}") from None
    if not files:
        return set(), finished
    uris: set[str] = set()
    import pyarrow.parquet as pq

    for f in files:
        try:
            uris.update(pq.read_table(f, columns=["uri"], filesystem=fs).column("uri").to_pylist())
        except (OSError, pa.ArrowInvalid):
            fs.rm(f)  # a file cut short by a crash: its rows are redone
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
        The ``features.json`` content plus ``seconds`` and ``files_per_s`` of this run.
    """
    cfg = get_preset(preset)
    ratios = parse_ratios(split)
    kind, _ = parse_labels_spec(labels)
    started = time.time()
    uris = storage.list_audio(input_uri, endpoint_url=endpoint_url)
    if not uris:
        raise StorageError(f"no audio files found under {input_uri} (extensions: {', '.join(storage.AUDIO_EXTENSIONS)})")
    records = records_for(labels, uris, subset=subset, endpoint_url=endpoint_url, input_uri=input_uri)
    keep_source = official_split or kind == "manifest"
    assign_splits(records, ratios=ratios, seed=seed, group_by=group_by, keep_source_split=keep_source)

    if overwrite:
        _clear(output_uri, endpoint_url=endpoint_url)
    done, _ = _existing_uris(output_uri, endpoint_url=endpoint_url)
    todo = [r for r in records if r["uri"] not in done]
    random.Random(seed).shuffle(todo)  # spread long songs over tasks

    if todo:
        _run_pipeline(todo, output_uri, cfg=cfg, max_seconds=max_seconds, files_per_task=files_per_task,
                      address=address, num_cpus=num_cpus, endpoint_url=endpoint_url)
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


def _run_pipeline(todo, output_uri, *, cfg, max_seconds, files_per_task, address, num_cpus, endpoint_url):
    import ray

    from mgr.extract_step import extract_rows
    from mgr.runtime import ray_session

    def run_batch(batch: pa.Table) -> pa.Table:
        return extract_rows(batch.to_pylist(), cfg=cfg, max_seconds=max_seconds, endpoint_url=endpoint_url)

    with ray_session(address=address, num_cpus=num_cpus, endpoint_url=endpoint_url):
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n_blocks = min(len(todo), max(2 * cpus, math.ceil(len(todo) / max(1, files_per_task))))
        ds = ray.data.from_items(todo, override_num_blocks=n_blocks)
        ds = ds.map_batches(run_batch, batch_size=None, batch_format="pyarrow", zero_copy_batch=True, num_cpus=1)
        pafs, path = pyarrow_filesystem(output_uri, endpoint_url=endpoint_url)
        try:
            ds.write_parquet(path, filesystem=pafs)
        except MgrError:
            raise
        except Exception as exc:  # noqa: BLE001 - a storage or cluster failure, not a file's
            raise JobError(f"extraction failed while writing {output_uri}: {str(exc).splitlines()[0]}") from exc


def _finish(records, output_uri, *, cfg, labels, seed, ratios, group_by, official_split, endpoint_url):
    """Check every input is in OUTPUT exactly once, then build ``features.json``."""
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
