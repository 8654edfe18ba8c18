"""GTZAN-style trees: the parent folder of each file is its genre (``blues/blues.00000.wav``)."""

from __future__ import annotations

from mgr.errors import LabelSourceError
from mgr.datasets.sources import track_id_from_uri

__all__ = ["folder_records"]


def folder_records(uris: list[str]) -> list[dict]:
    """One record per file, labelled with the name of the folder that holds it.

    Parameters
    ----------
    uris : list of str
        Listed audio files (local paths or URIs).

    Raises
    ------
    LabelSourceError
        Fewer than two genre folders: the layout is not folder-per-genre.
    """
    records = []
    for uri in uris:
        parts = uri.rstrip("/").split("/")
        label = parts[-2] if len(parts) >= 2 and parts[-2] else None
        records.append(
            {"uri": uri, "track_id": track_id_from_uri(uri), "label": label, "split": None, "artist": None, "error": None}
        )
    labels = {r["label"] for r in records}
    if len(labels) < 2:
        raise LabelSourceError(
            f"--labels folder expects one folder per genre (e.g. blues/, rock/ under INPUT); "
            f"found {len(labels)} folder(s): {sorted(map(str, labels))[:5]}"
        )
    return records
