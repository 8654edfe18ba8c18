"""Manifests: a CSV or Parquet file listing ``uri,label`` (optional ``split``, ``artist``, ``track_id``).

A manifest's ``uri`` may be absolute (a path or URI) or relative to INPUT. Every listed
audio file gets its manifest row; files the manifest lists but INPUT lacks are kept as rows
with an ``error`` so nothing is silently lost.
"""

from __future__ import annotations

import io
import os
import posixpath

import pandas as pd

from mgr.io.location import Location
from mgr.errors import LabelSourceError, StorageError
from mgr.datasets.sources import track_id_from_uri
from mgr.datasets.sources.split import SPLIT_WORDS as _SPLITS

__all__ = ["read_manifest", "manifest_records", "manifest_uri"]


def read_manifest(path: str, *, endpoint_url: str | None = None) -> pd.DataFrame:
    """Read a manifest (``.csv`` or ``.parquet``) with at least ``uri`` and ``label`` columns.

    Raises
    ------
    LabelSourceError
        Missing file, unknown format, missing columns or unknown split names.
    """
    try:
        raw = Location.of(path, endpoint_url=endpoint_url).read_bytes()
    except StorageError as exc:
        raise LabelSourceError(f"cannot read manifest: {exc}") from None
    try:
        if path.lower().endswith((".parquet", ".pq")):
            df = pd.read_parquet(io.BytesIO(raw))
        else:
            df = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, na_values=[""])
    except Exception as exc:  # noqa: BLE001 - any parser failure is the user's file
        raise LabelSourceError(f"cannot parse manifest {path}: {exc}") from None
    missing = {"uri", "label"} - set(df.columns)
    if missing:
        raise LabelSourceError(f"manifest {path} lacks the column(s) {sorted(missing)} (needs uri,label)")
    if "split" in df.columns:
        bad = set(df["split"].dropna().astype(str).str.lower()) - set(_SPLITS) - {""}
        if bad:
            raise LabelSourceError(f"manifest {path}: unknown split value(s) {sorted(bad)}; use train/val/test")
    if df["uri"].duplicated().any():
        dup = df.loc[df["uri"].duplicated(), "uri"].iloc[0]
        raise LabelSourceError(f"manifest {path} lists {dup!r} more than once")
    return df


def manifest_uri(uri: str, input_uri: str) -> str:
    """A manifest's ``uri`` as a listing names it: absolute ones as they are, relative ones
    below ``input_uri`` (INPUT, or the manifest's folder; ``./`` and ``..`` resolved)."""
    if "://" in uri or uri.startswith("/") or not input_uri:
        return uri
    if "://" in input_uri:
        proto, rest = input_uri.split("://", 1)
        return f"{proto}://{posixpath.normpath(posixpath.join(rest, uri))}"
    return os.path.normpath(os.path.join(os.path.abspath(input_uri), uri))


def _key(uri: str, input_uri: str) -> str:
    base = input_uri.rstrip("/") + "/"
    return uri[len(base):] if input_uri and uri.startswith(base) else uri


def manifest_records(uris: list[str], manifest: pd.DataFrame, *, input_uri: str = "") -> list[dict]:
    """One record per listed file, plus one error record per manifest row INPUT lacks."""
    rows = {}
    for row in manifest.to_dict("records"):
        rows[str(row["uri"])] = row
    records, seen = [], set()
    for uri in uris:
        row = rows.get(uri)
        key = uri
        if row is None:
            key = _key(uri, input_uri)
            row = rows.get(key)
        rec = {"uri": uri, "track_id": track_id_from_uri(uri), "label": None, "split": None, "artist": None, "error": None}
        if row is not None:
            seen.add(key)
            rec.update(_fields(row))
        records.append(rec)
    for key, row in rows.items():
        if key in seen:
            continue
        uri = key if ("://" in key or key.startswith("/")) else Location(input_uri).join(key).uri
        rec = {"uri": uri, "track_id": track_id_from_uri(uri), "label": None, "split": None, "artist": None}
        rec.update(_fields(row))
        rec["error"] = "listed in the manifest but not found under INPUT"
        records.append(rec)
    return records


def _fields(row: dict) -> dict:
    out = {}
    label = row.get("label")
    out["label"] = None if pd.isna(label) or label == "" else str(label)
    split = row.get("split")
    if split is not None and not pd.isna(split) and split != "":
        out["split"] = _SPLITS[str(split).lower()]
    artist = row.get("artist")
    if artist is not None and not pd.isna(artist) and artist != "":
        out["artist"] = str(artist)
    tid = row.get("track_id")
    if tid is not None and not pd.isna(tid) and tid != "":
        out["track_id"] = str(tid)
    return out
