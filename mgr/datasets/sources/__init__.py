"""Label sources: pure functions from listed audio files to records (no Ray).

A record is a dict with ``uri``, ``track_id``, ``label`` (None when unknown), ``split``
(None unless the source defines one) and ``artist`` (None when unknown). ``SOURCES`` maps
the ``--labels`` kinds to the functions that build records; each source returns exactly one
record per listed file (plus, for manifests, one per listed-but-missing file, flagged with an
``error``), so nothing is silently dropped.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from mgr.errors import LabelSourceError

__all__ = ["SOURCES", "parse_labels_spec", "records_for", "track_id_from_uri"]

Record = dict[str, Any]


def track_id_from_uri(uri: str) -> str:
    """File name without extension: ``.../blues/blues.00042.wav`` → ``blues.00042``."""
    return os.path.splitext(uri.rstrip("/").rsplit("/", 1)[-1])[0]


def parse_labels_spec(spec: str) -> tuple[str, str | None]:
    """Split ``--labels`` into ``(kind, argument)``: ``fma:/x/tracks.csv`` → ``("fma", "/x/tracks.csv")``.

    Raises
    ------
    LabelSourceError
        Unknown kind, or a kind that needs a path given without one.
    """
    kind, _, arg = spec.partition(":")
    if kind not in SOURCES:
        raise LabelSourceError(
            f"unknown label source {spec!r}; use one of: folder, fma:TRACKS_CSV, manifest:FILE, none"
        )
    if kind in ("fma", "manifest") and not arg:
        raise LabelSourceError(f"--labels {kind} needs a file: --labels {kind}:PATH")
    if kind in ("folder", "none") and arg:
        raise LabelSourceError(f"--labels {kind} takes no argument (got {spec!r})")
    return kind, arg or None


def _none(uris: list[str], **_: Any) -> list[Record]:
    return [
        {"uri": u, "track_id": track_id_from_uri(u), "label": None, "split": None, "artist": None, "error": None}
        for u in uris
    ]


def _folder(uris: list[str], **_: Any) -> list[Record]:
    from mgr.datasets.sources.folder import folder_records

    return folder_records(uris)


def _fma(uris: list[str], *, path: str, subset: str | None = None, endpoint_url: str | None = None, **_: Any):
    from mgr.datasets.sources.fma import fma_records, read_tracks

    return fma_records(uris, read_tracks(path, endpoint_url=endpoint_url), subset=subset)


def _manifest(uris: list[str], *, path: str, input_uri: str = "", endpoint_url: str | None = None, **_: Any):
    from mgr.datasets.sources.manifest import manifest_records, read_manifest

    return manifest_records(uris, read_manifest(path, endpoint_url=endpoint_url), input_uri=input_uri)


SOURCES: dict[str, Callable[..., list[Record]]] = {
    "folder": _folder,
    "fma": _fma,
    "manifest": _manifest,
    "none": _none,
}


def records_for(spec: str, uris: list[str], **options: Any) -> list[Record]:
    """Records for ``uris`` from the label source ``spec`` (``--labels``)."""
    kind, path = parse_labels_spec(spec)
    return SOURCES[kind](uris, path=path, **options)
