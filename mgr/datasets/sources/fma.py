"""FMA (Free Music Archive): labels from ``fma_metadata/tracks.csv``, audio at ``ddd/dddddd.mp3``.

tracks.csv has a two-row column header (``('track', 'genre_top')``, ``('set', 'subset')``,
``('set', 'split')``, ``('artist', 'id')``...) and a ``track_id`` index row.
"""

from __future__ import annotations

import io
import re

import pandas as pd

from mgr.io.location import Location
from mgr.errors import LabelSourceError, StorageError

__all__ = ["SUBSETS", "read_tracks", "fma_records", "fma_track_id", "FMA_SPLITS"]

SUBSETS = ("small", "medium", "large")
FMA_SPLITS = {"training": "train", "validation": "val", "test": "test"}
_ID = re.compile(r"(?:^|/)(\d{3})/(\d{6})\.\w+$")
_NEEDED = [("track", "genre_top"), ("set", "subset"), ("set", "split")]


def read_tracks(path: str, *, endpoint_url: str | None = None) -> pd.DataFrame:
    """Read FMA's tracks.csv into a frame indexed by integer track id.

    Returns
    -------
    pandas.DataFrame
        Columns ``genre``, ``subset``, ``split`` (train/val/test), ``artist`` (str or None).

    Raises
    ------
    LabelSourceError
        The file is missing, unreadable, or lacks the columns FMA's tracks.csv has.
    """
    try:
        raw = Location.of(path, endpoint_url=endpoint_url).read_bytes()
    except StorageError as exc:
        raise LabelSourceError(f"cannot read FMA tracks.csv: {exc}") from None
    try:
        df = pd.read_csv(io.BytesIO(raw), index_col=0, header=[0, 1], low_memory=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise LabelSourceError(f"{path} is not FMA's tracks.csv (two-row header expected): {exc}") from None
    missing = [c for c in _NEEDED if c not in df.columns]
    if missing:
        raise LabelSourceError(
            f"{path} lacks the columns {missing} of FMA's tracks.csv (fma_metadata/tracks.csv)"
        )
    try:
        index = df.index.astype("int64")
    except (TypeError, ValueError):
        raise LabelSourceError(f"{path}: the first column must hold integer track ids") from None
    artist = None
    for col in (("artist", "id"), ("artist", "name")):
        if col in df.columns:
            artist = df[col].astype("string").where(df[col].notna(), None)
            break
    genre = df[("track", "genre_top")]
    out = pd.DataFrame(
        {
            "genre": genre.where(genre.notna(), None).to_numpy(dtype=object),
            "subset": df[("set", "subset")].astype("string").to_numpy(dtype=object),
            "split": df[("set", "split")].map(FMA_SPLITS).to_numpy(dtype=object),
            "artist": None if artist is None else artist.to_numpy(dtype=object),
        },
        index=index,
    )
    return out


def _in_subset(row_subset: str | None, subset: str | None) -> bool:
    if subset is None:
        return True
    if row_subset is None or row_subset is pd.NA:
        return False
    # FMA's subsets are nested: small ⊂ medium ⊂ large.
    return SUBSETS.index(str(row_subset)) <= SUBSETS.index(subset) if str(row_subset) in SUBSETS else False


def fma_track_id(uri: str) -> str | None:
    """The six-digit track id of an FMA audio path (``.../000/000002.mp3`` → ``"000002"``), or None."""
    m = _ID.search(uri.replace("\\", "/"))
    return m.group(2) if m else None


def fma_records(uris: list[str], tracks: pd.DataFrame, *, subset: str | None = None,
                require_match: bool = True) -> list[dict]:
    """One record per file; ``label`` from genre_top, ``split`` FMA's official split.

    Files whose name is not ``ddd/dddddd.ext``, that tracks.csv does not know, that have no
    top genre, or that lie outside ``subset`` keep their row with ``label`` None. Each
    record also says whether tracks.csv knows its file (``matched``).

    Parameters
    ----------
    require_match : bool
        Raise when no file matches tracks.csv (off for one partition of a catalog; the
        caller checks the total).

    Raises
    ------
    LabelSourceError
        ``subset`` is not one of small/medium/large, or no file matches tracks.csv at all.
    """
    if subset is not None and subset not in SUBSETS:
        raise LabelSourceError(f"unknown FMA subset {subset!r}; choose one of {list(SUBSETS)}")
    records, matched = [], 0
    for uri in uris:
        key = fma_track_id(uri)
        rec = {"uri": uri, "track_id": key, "label": None, "split": None, "artist": None, "error": None,
               "matched": False}
        if key is not None:
            tid = int(key)
            if tid in tracks.index:
                row = tracks.loc[tid]
                matched += 1
                rec["matched"] = True
                if _in_subset(row["subset"], subset) and row["genre"] is not None:
                    rec["label"] = row["genre"]
                    rec["split"] = row["split"]
                rec["artist"] = row["artist"]
        else:
            rec["track_id"] = uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        records.append(rec)
    if require_match and uris and matched == 0:
        raise LabelSourceError(NO_MATCH)
    return records


#: the error when no listed file is a track of tracks.csv
NO_MATCH = ("no audio file matches a track of tracks.csv: FMA audio must lie at ddd/dddddd.mp3 "
            "(e.g. fma_small/000/000002.mp3)")
