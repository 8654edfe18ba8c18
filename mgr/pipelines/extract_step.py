"""The per-file extraction step (pure: no Ray): one record in, one features row out.

Decoding and the log-mel run in the same call that reads the file, so no waveform ever
leaves the worker; any failure becomes the row's ``error`` instead of stopping the job.
"""

from __future__ import annotations

from typing import Any, Iterable

import pyarrow as pa

from mgr.audio.decode import DEFAULT_MAX_SECONDS, load_audio
from mgr.config import FeatureConfig
from mgr.errors import MgrError
from mgr.audio.features import log_mel
from mgr.datasets.featureset import SCHEMA, encode_mel

__all__ = ["extract_record", "extract_rows"]


def extract_record(
    rec: dict,
    *,
    cfg: FeatureConfig,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    endpoint_url: str | None = None,
) -> dict:
    """The features row of one record (``uri``, ``track_id``, ``label``, ``split``, ``artist``, ``error``)."""
    row = {
        "uri": rec["uri"],
        "track_id": rec.get("track_id"),
        "label": rec.get("label"),
        "split": rec.get("split"),
        "artist": rec.get("artist"),
        "duration_s": None,
        "n_mels": None,
        "n_frames": None,
        "mel": None,
        "error": rec.get("error"),
    }
    if row["error"]:
        row["split"] = None
        return row
    try:
        y, duration = load_audio(rec["uri"], cfg=cfg, max_seconds=max_seconds, endpoint_url=endpoint_url)
        mel = log_mel(y, cfg=cfg)
    except MgrError as exc:
        row["error"] = str(exc)
    except MemoryError:
        row["error"] = "out of memory while decoding (lower --max-seconds or give workers more memory)"
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop the job
        row["error"] = f"unexpected {type(exc).__name__}: {exc}"
    else:
        row.update(duration_s=duration, n_mels=mel.shape[0], n_frames=mel.shape[1], mel=encode_mel(mel))
    if row["error"]:
        row["split"] = None
    return row


def extract_rows(records: Iterable[dict], **options: Any) -> pa.Table:
    """Features rows of ``records`` as one Arrow table with the dataset :data:`SCHEMA`."""
    rows = [extract_record(rec, **options) for rec in records]
    return pa.Table.from_pylist(rows, schema=SCHEMA)
