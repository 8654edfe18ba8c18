"""The labels dataset: its Parquet schema, track results from window distributions and the
completion marker (pure pyarrow/numpy, no Ray). What an OUTPUT already holds is read by the
labeling job's planner (:func:`mgr.pipelines.catalog.read_output_parts`), never here.

A labels dataset is a folder of ``part-*.parquet`` files (one schema across all of them,
the genre vocabulary and the model id in the schema metadata) plus ``_SUCCESS.json``
once a run finished. One row per catalog file::

    import pandas as pd
    df = pd.read_parquet(OUTPUT)   # or pyarrow.parquet.read_table(OUTPUT)

Files and markers whose names start with ``_`` or ``.`` are ignored by pyarrow and pandas,
so an unfinished write (``.tmp-*``) is never read as data.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from mgr.io.location import Location
from mgr.io.parts import list_parts, part_name, write_part  # noqa: F401  (labels parts are mgr's parts)
from mgr.errors import ConfigError, StorageError

__all__ = [
    "SEGMENT",
    "SUMMARY_COLUMNS",
    "UNKNOWN",
    "RETRYABLE_PREFIX",
    "MARKER_NAME",
    "error_class",
    "labels_schema",
    "genres_of",
    "track_result",
    "error_result",
    "to_table",
    "segment_times",
    "read_marker",
    "write_marker",
    "write_part",
    "part_name",
]

MARKER_NAME = "_SUCCESS.json"

SEGMENT = pa.struct(
    [
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("genre", pa.string()),
        ("confidence", pa.float32()),
    ]
)

#: per-window, per-step, per-class probabilities of a crnn (``--per-step``)
STEPS = pa.list_(pa.list_(pa.list_(pa.float32())))

_FIELDS = [
    ("uri", pa.string()),
    ("track_id", pa.string()),
    ("genre", pa.string()),
    ("confidence", pa.float32()),
    ("top_genres", pa.list_(pa.string())),
    ("top_probs", pa.list_(pa.float32())),
    ("probs", pa.list_(pa.float32())),
    ("segments", pa.list_(SEGMENT)),
    ("duration_s", pa.float64()),
    ("decoded_s", pa.float64()),
    ("model_id", pa.string()),
    ("error", pa.string()),
    ("steps", STEPS),
]

#: the small columns a run returns to the driver for its summary
SUMMARY_COLUMNS = ("uri", "genre", "duration_s", "decoded_s", "error")

#: start of the ``error`` of a file that failed for a storage/network reason (``--retry-errors``)
RETRYABLE_PREFIX = "storage: "

#: ``genre`` of a track whose top probability is below ``--min-confidence``
UNKNOWN = "unknown"


def error_class(message: str) -> str:
    """The kind of an ``error`` message, without its file-specific details (summaries, reports).

    ``"not decodable audio (Format not recognised)"`` → ``"not decodable audio"``;
    ``"storage: cannot read file: ..."`` → ``"storage: cannot read file"``; digits become ``N``.
    """
    msg = (message or "").strip()
    prefix = ""
    if msg.startswith(RETRYABLE_PREFIX):
        prefix, msg = RETRYABLE_PREFIX, msg[len(RETRYABLE_PREFIX):]
    head = re.split(r" \(|: |\n", msg, maxsplit=1)[0].strip() or "error"
    head = re.sub(r"\d+", "N", head)
    return (prefix + head)[:80]


def labels_schema(genres: Sequence[str], *, model_id: str, extra_columns: Sequence[str] = ()) -> pa.Schema:
    """The one schema of every file of a labels dataset.

    Parameters
    ----------
    genres : sequence of str
        The model's vocabulary, in output order (``probs[i]`` is ``genres[i]``).
    model_id : str
        The model's id (name + hash of its weights).
    extra_columns : sequence of str
        Manifest columns carried through (strings), after the fixed columns.

    Returns
    -------
    pa.Schema
        Columns ``uri, track_id, genre, confidence, top_genres, top_probs, probs,
        segments, duration_s, decoded_s, model_id, error, steps`` (``decoded_s``: seconds
        of audio analysed, less than ``duration_s`` with ``--max-windows``; ``steps`` is null
        unless the run asked for crnn per-step distributions); metadata ``mgr.genres`` (JSON list) and
        ``mgr.model_id``.
    """
    clash = sorted(set(extra_columns) & {name for name, _ in _FIELDS})
    if clash:
        raise ConfigError(f"manifest columns {clash} clash with labels columns; rename them")
    meta = {b"mgr.genres": json.dumps(list(genres)).encode(), b"mgr.model_id": model_id.encode()}
    return pa.schema(_FIELDS + [(c, pa.string()) for c in extra_columns], metadata=meta)


def genres_of(schema: pa.Schema) -> list[str]:
    """The vocabulary stored in a labels file's schema metadata (empty if absent)."""
    raw = (schema.metadata or {}).get(b"mgr.genres")
    return json.loads(raw) if raw else []


def segment_times(
    starts: np.ndarray, *, width: int, n_frames: int, frame_s: float, duration_s: float
) -> list[tuple[float, float]]:
    """Start and end (seconds) of each window.

    Parameters
    ----------
    starts : np.ndarray
        ``[n_windows]`` start frames.
    width : int
        Window length W in frames.
    n_frames : int
        Frames of the track (a padded short track's window ends with the track).
    frame_s : float
        Seconds per frame hop.
    duration_s : float
        Track duration; no window ends after it.
    """
    out = []
    for s in np.asarray(starts, dtype=np.int64):
        end_frame = min(int(s) + width, n_frames)
        start_s = min(float(s) * frame_s, duration_s)
        out.append((start_s, max(start_s, min(end_frame * frame_s, duration_s))))
    return out


def track_result(
    window_probs: np.ndarray,
    *,
    times: Sequence[tuple[float, float]],
    genres: Sequence[str],
    top_k: int,
    steps: np.ndarray | None = None,
    min_confidence: float = 0.0,
    track_probs: np.ndarray | None = None,
) -> dict[str, Any]:
    """Aggregate a track's window distributions into its result columns.

    Parameters
    ----------
    window_probs : np.ndarray
        ``[n_windows, n_classes]`` distribution of each window (rows sum to 1).
    times : sequence of (float, float)
        ``n_windows`` (start_s, end_s) of the windows.
    genres : sequence of str
        Vocabulary, ``n_classes`` long.
    top_k : int
        How many genres ``top_genres``/``top_probs`` keep (capped at ``n_classes``).
    steps : np.ndarray, optional
        ``[n_windows, n_steps, n_classes]`` per-step distributions (crnn ``--per-step``).
    min_confidence : float
        Below this top probability ``genre`` is ``"unknown"`` (``top_genres`` and
        ``confidence`` still say what the model thought).
    track_probs : np.ndarray, optional
        ``[n_classes]`` the track's distribution when it is not the plain mean of its
        windows' (a calibrated one: the labeling job applies the model's temperature).

    Returns
    -------
    dict
        ``genre, confidence, top_genres, top_probs, probs, segments, steps``; the track's
        distribution is the mean of its windows'.
    """
    wp = np.asarray(window_probs, dtype=np.float32)
    if wp.ndim != 2 or wp.shape[0] == 0 or wp.shape[1] != len(genres):
        raise ValueError(f"window_probs must be [n_windows>0, {len(genres)}], got {wp.shape}")
    if len(times) != wp.shape[0]:
        raise ValueError(f"{len(times)} window times for {wp.shape[0]} windows")
    if track_probs is None:
        probs = wp.mean(axis=0, dtype=np.float64).astype(np.float32)
    else:
        probs = np.asarray(track_probs, dtype=np.float32).reshape(len(genres))
    k = max(1, min(int(top_k), len(genres)))
    order = np.argsort(-probs, kind="stable")[:k]
    best = np.argmax(wp, axis=1)
    segments = [
        {"start_s": float(a), "end_s": float(b), "genre": genres[int(g)], "confidence": float(wp[i, g])}
        for i, ((a, b), g) in enumerate(zip(times, best))
    ]
    return {
        "genre": genres[int(order[0])] if probs[order[0]] >= min_confidence else UNKNOWN,
        "confidence": float(probs[order[0]]),
        "top_genres": [genres[int(i)] for i in order],
        "top_probs": [float(probs[i]) for i in order],
        "probs": probs.tolist(),
        "segments": segments,
        "steps": None if steps is None else np.asarray(steps, dtype=np.float32).tolist(),
    }


def error_result() -> dict[str, Any]:
    """Result columns of a file that could not be labeled (all null)."""
    return {k: None for k in ("genre", "confidence", "top_genres", "top_probs", "probs", "segments", "steps")}


def to_table(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts with the schema's columns; missing ones null) → a table of ``schema``."""
    cols = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.Table.from_pydict(cols, schema=schema)


def read_marker(where: Location | str, *, endpoint_url: str | None = None) -> dict[str, Any] | None:
    """The completion marker of an OUTPUT, or None when absent."""
    marker = Location.of(where, endpoint_url=endpoint_url).join(MARKER_NAME)
    try:
        with marker.fs.open(marker.path, "r") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read {MARKER_NAME} of {marker.uri}: {exc}") from None


def write_marker(where: Location | str, marker: dict[str, Any], *, endpoint_url: str | None = None) -> None:
    """Write the completion marker ``_SUCCESS.json`` (counts, model id, vocabulary)."""
    Location.of(where, endpoint_url=endpoint_url).join(MARKER_NAME).write_json(marker)
