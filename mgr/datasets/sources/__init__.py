"""Label sources: pure functions from listed audio files to records (no Ray).

A record is a dict with ``uri``, ``track_id``, ``label`` (None when unknown), ``split``
(None unless the source defines one) and ``artist`` (None when unknown). ``SOURCES`` maps
the ``--labels`` kinds to the functions that build records; each source returns exactly one
record per listed file (plus, for manifests, one per listed-but-missing file, flagged with an
``error``), so nothing is silently dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from mgr.errors import LabelSourceError

__all__ = ["SOURCES", "parse_labels_spec", "records_for", "track_id_from_uri", "LabelJoin"]

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


@dataclass(frozen=True)
class LabelJoin:
    """A label file (FMA's tracks.csv, a manifest) joined to listed audio files by a key.

    The three steps run where the data is, never all on one process: :meth:`key_of` on
    each listed uri (in the listing tasks), :meth:`read` on the label file (in one task),
    and :meth:`records` on one key partition of both sides (rows with equal keys meet in
    the same partition). The union of the partitions' records equals
    ``records_for(spec, all_uris)``.

    Attributes
    ----------
    kind : {"fma", "manifest"}
    path : str
        The label file.
    input_uri : str
        INPUT (a manifest's relative uris are relative to it).
    subset : str, optional
        FMA subset (small/medium/large).
    endpoint_url : str, optional
    """

    kind: str
    path: str
    input_uri: str = ""
    subset: str | None = None
    endpoint_url: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("fma", "manifest"):
            raise LabelSourceError(f"a label file join needs --labels fma: or manifest:, not {self.kind!r}")

    def key_of(self, uri: str) -> str:
        """The join key of a listed file: FMA's six-digit track id, or the manifest uri."""
        if self.kind == "fma":
            from mgr.datasets.sources.fma import fma_track_id

            return fma_track_id(uri) or uri
        return uri

    def read(self):
        """The label file as a ``pandas.DataFrame`` with a ``key`` column (one row per key).

        Raises
        ------
        LabelSourceError
            Missing, unparseable or malformed label file.
        """
        if self.kind == "fma":
            from mgr.datasets.sources.fma import read_tracks

            tracks = read_tracks(self.path, endpoint_url=self.endpoint_url)
            return tracks.assign(key=[f"{int(t):06d}" for t in tracks.index])
        from mgr.datasets.sources.manifest import manifest_uri, read_manifest

        df = read_manifest(self.path, endpoint_url=self.endpoint_url)
        keys = [manifest_uri(str(u), self.input_uri) for u in df["uri"]]
        df = df.assign(uri=keys, key=keys)
        if df["key"].duplicated().any():
            dup = df.loc[df["key"].duplicated(), "key"].iloc[0]
            raise LabelSourceError(f"manifest {self.path} lists {dup!r} more than once")
        return df

    def records(self, uris: list[str], rows) -> tuple[list[Record], int]:
        """Records of one key partition: ``uris`` listed, ``rows`` of the label file.

        Returns
        -------
        records : list of dict
            One per listed file (plus, for a manifest, one error record per row whose
            file INPUT lacks).
        matched : int
            Listed files the label file knows (FMA: zero over the whole catalog is an error).
        """
        if self.kind == "fma":
            from mgr.datasets.sources.fma import fma_records

            tracks = rows.set_index(rows["key"].astype("int64")) if len(rows) else rows
            recs = fma_records(uris, tracks, subset=self.subset, require_match=False)
            return recs, sum(1 for r in recs if r.get("matched"))
        from mgr.datasets.sources.manifest import manifest_records

        recs = manifest_records(uris, rows, input_uri=self.input_uri)
        return recs, sum(1 for r in recs if r.get("label") is not None and not r.get("error"))
