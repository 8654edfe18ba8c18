"""The features dataset: its Parquet schema, the mel encoding, and readers (no Ray).

A features dataset is a folder of Parquet files plus ``_features.json`` (the
"features.json" of the design: config, vocabulary, counts); one row per input file. ``mel`` is little-endian float16 bytes, band-major ``[n_mels, n_frames]``::

    t = pyarrow.parquet.read_table(OUTPUT)
    row = t.slice(0, 1).to_pylist()[0]
    mel = np.frombuffer(row["mel"], np.float16).reshape(row["n_mels"], row["n_frames"])
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from mgr.errors import ConfigError, StorageError
from mgr.io.location import Location

__all__ = [
    "SCHEMA",
    "MANIFEST_NAME",
    "encode_mel",
    "decode_mel",
    "parquet_files",
    "read_table",
    "read_manifest",
    "write_manifest",
    "to_arrays",
    "decode_mels",
    "feature_config",
]

#: The dataset's metadata. The leading underscore matters: pyarrow's dataset discovery skips
#: names starting with "_" or ".", so ``pyarrow.parquet.read_table(OUTPUT)`` reads the whole
#: dataset in one call (a plain ``features.json`` beside the Parquet files breaks that call).
MANIFEST_NAME = "_features.json"

SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("track_id", pa.string()),
        ("label", pa.string()),
        ("split", pa.string()),
        ("artist", pa.string()),
        ("duration_s", pa.float64()),
        ("n_mels", pa.int32()),
        ("n_frames", pa.int32()),
        ("mel", pa.binary()),
        ("error", pa.string()),
    ]
)


def encode_mel(mel: np.ndarray) -> bytes:
    """``[n_mels, n_frames]`` float array → little-endian float16 bytes (band-major)."""
    return np.ascontiguousarray(mel, dtype="<f2").tobytes()


def decode_mel(buf: bytes, n_mels: int, n_frames: int) -> np.ndarray:
    """Inverse of :func:`encode_mel`: ``[n_mels, n_frames]`` float16 (read-only view)."""
    return np.frombuffer(buf, dtype="<f2").reshape(int(n_mels), int(n_frames))


def parquet_files(where: Location | str, *, endpoint_url: str | None = None) -> list[str]:
    """The Parquet files of a features dataset (paths as its filesystem knows them), sorted.

    Names starting with ``_`` or ``.`` (markers, unfinished writes) are skipped, as pyarrow's
    dataset discovery does.

    Raises
    ------
    StorageError
        The dataset does not exist, cannot be listed or holds no Parquet file.
    """
    loc = Location.of(where, endpoint_url=endpoint_url)
    if not loc.exists():
        raise StorageError(f"features dataset {loc.uri} does not exist", retryable=False)
    files = sorted(p for p in loc.files() if p.endswith(".parquet")
                   and not posixpath.basename(p).startswith(("_", ".")))
    if not files:
        raise StorageError(f"{loc.uri} holds no Parquet files: is it the OUTPUT of `mgr extract`?",
                           retryable=False)
    return files


def read_table(
    uri: Location | str,
    *,
    columns: Sequence[str] | None = None,
    splits: Iterable[str] | None = None,
    ok_only: bool = False,
    track_ids: Iterable[str] | None = None,
    endpoint_url: str | None = None,
) -> pa.Table:
    """Read a features dataset (or a filtered part of it) into one Arrow table.

    Parameters
    ----------
    uri : Location or str
        Folder (local or ``s3://``) written by ``mgr extract`` (a str takes ``endpoint_url``).
    columns : sequence of str, optional
        Columns to read; all by default.
    splits : iterable of str, optional
        Keep only rows whose ``split`` is one of these.
    ok_only : bool
        Drop rows with an ``error``.
    track_ids : iterable of str, optional
        Keep only these tracks (a filter pushed down to the scan).
    """
    import pyarrow.dataset as ds

    loc = Location.of(uri, endpoint_url=endpoint_url)
    dataset = ds.dataset(parquet_files(loc), filesystem=loc.fs, format="parquet", schema=SCHEMA)
    expr = None
    if splits is not None:
        expr = ds.field("split").isin(list(splits))
    if ok_only:
        ok = ds.field("error").is_null()
        expr = ok if expr is None else expr & ok
    if track_ids is not None:
        ids = ds.field("track_id").isin(list(track_ids))
        expr = ids if expr is None else expr & ids
    return dataset.to_table(columns=list(columns) if columns else None, filter=expr)


def decode_mels(mel: Sequence, n_mels: Sequence[int], n_frames: Sequence[int]) -> list[np.ndarray]:
    """Decode columns of ``mel`` bytes (Arrow arrays or sequences) into ``[n_mels, n_frames]`` float16 arrays."""
    if isinstance(mel, (pa.Array, pa.ChunkedArray)):
        mel = mel.to_pylist()
    if isinstance(n_mels, (pa.Array, pa.ChunkedArray)):
        n_mels = n_mels.to_pylist()
    if isinstance(n_frames, (pa.Array, pa.ChunkedArray)):
        n_frames = n_frames.to_pylist()
    return [decode_mel(m, a, b) for m, a, b in zip(mel, n_mels, n_frames)]


def to_arrays(table: pa.Table) -> list[np.ndarray]:
    """Decode the ``mel`` column of ``table`` into a list of ``[n_mels, n_frames]`` float16."""
    mels = table.column("mel").to_pylist()
    n_mels = table.column("n_mels").to_pylist()
    n_frames = table.column("n_frames").to_pylist()
    return [decode_mel(m, a, b) for m, a, b in zip(mels, n_mels, n_frames)]


def read_manifest(where: Location | str, *, endpoint_url: str | None = None) -> dict[str, Any]:
    """Load ``_features.json`` of a features dataset (a Location, or a uri with its endpoint)."""
    loc = Location.of(where, endpoint_url=endpoint_url)
    uri, fs, path = loc.uri, loc.fs, loc.join(MANIFEST_NAME).path
    try:
        with fs.open(path, "r") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise StorageError(
            f"{uri} has no {MANIFEST_NAME}: is it the finished OUTPUT of `mgr extract`?"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise StorageError(f"cannot read {MANIFEST_NAME} in {uri}: {exc}") from None


def write_manifest(where: Location | str, manifest: dict[str, Any], *, endpoint_url: str | None = None) -> None:
    """Write ``_features.json`` (written last: its presence marks a finished extraction)."""
    Location.of(where, endpoint_url=endpoint_url).join(MANIFEST_NAME).write_bytes(
        json.dumps(manifest, indent=2, sort_keys=True).encode())


def feature_config(manifest: dict[str, Any]):
    """The :class:`~mgr.config.FeatureConfig` a features dataset was extracted with."""
    from mgr.config import FeatureConfig

    try:
        return FeatureConfig.from_dict(manifest["feature_config"])
    except KeyError:
        raise ConfigError("features.json has no feature_config") from None
