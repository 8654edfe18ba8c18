"""Seeded train/val/test assignment that never moves a track once assigned.

Each track (or each artist, with ``group_by="artist"``) draws a stable number u in [0, 1)
from a hash of ``(seed, genre, key)``; u < p_train → train, < p_train + p_val → val, else
test. Because u depends only on the track itself, adding files later never moves existing
tracks, and each genre is split in the given proportions independently (stratified; exact
up to sampling noise of about ±sqrt(n·p·(1-p)) tracks per genre).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Sequence

from mgr.errors import ConfigError, LabelSourceError

__all__ = ["parse_ratios", "assign_splits", "unit_hash", "SPLIT_NAMES", "SPLIT_WORDS", "SplitRule", "ManifestSplit"]

SPLIT_NAMES = ("train", "val", "test")

#: the split names a manifest may use, and what they mean
SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "validation": "val", "valid": "val",
               "test": "test"}


def parse_ratios(text: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.7,0.2,0.1"`` → ``(0.7, 0.2, 0.1)``; must be three non-negative numbers summing to 1."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ConfigError(f"--split must be three numbers like 0.7,0.2,0.1 (got {text!r})") from None
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(f"--split needs three non-negative train,val,test ratios summing to 1 (got {text!r})")
    return values[0], values[1], values[2]


def unit_hash(*parts: object) -> float:
    """A stable number in [0, 1) from ``parts`` (same on every machine and Python run)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_splits(
    records: list[dict],
    *,
    ratios: tuple[float, float, float] = (0.7, 0.2, 0.1),
    seed: int = 0,
    group_by: str | None = None,
    keep_source_split: bool = True,
) -> list[dict]:
    """Set ``split`` on labelled records (in place) and return them.

    Parameters
    ----------
    records : list of dict
        Records of a label source; unlabelled or errored ones keep ``split`` None.
    ratios : tuple of float
        Train, val, test proportions.
    seed : int
        Changes the assignment.
    group_by : {None, "artist"}
        Hash the artist instead of the track, so an artist never spans splits
        (tracks without a known artist fall back to their own key).
    keep_source_split : bool
        Keep a split the source already defines (FMA official split, manifest column).
    """
    if group_by not in (None, "artist"):
        raise ConfigError(f"--group-by supports only 'artist' (got {group_by!r})")
    p_train, p_val, _ = ratios
    for rec in records:
        if rec.get("label") is None or rec.get("error"):
            rec["split"] = None if not keep_source_split else rec.get("split")
            continue
        if keep_source_split and rec.get("split"):
            continue
        key = rec.get("track_id") or rec["uri"]
        if group_by == "artist" and rec.get("artist"):
            # An artist lands in one split whatever genre its tracks have.
            u = unit_hash(seed, "artist", rec["artist"])
        else:
            u = unit_hash(seed, rec["label"], key)
        rec["split"] = "train" if u < p_train else ("val" if u < p_train + p_val else "test")
    return records


@dataclass(frozen=True)
class SplitRule:
    """The extraction's split rule with a chosen seed, applied to rows on the fly.

    A training run (or evaluation) with a rule uses ``rule.split_of(...)`` of each row
    instead of the stored ``split`` column, so another split of the same features needs no
    copy. The result is the one :func:`assign_splits` gives with ``keep_source_split=False``.

    Attributes
    ----------
    seed : int
    ratios : tuple of float
        Train, val, test proportions.
    group_by : {None, "artist"}
    """

    seed: int = 0
    ratios: tuple = (0.7, 0.2, 0.1)
    group_by: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", parse_ratios(tuple(self.ratios)))
        if self.group_by not in (None, "artist"):
            raise ConfigError(f"--group-by supports only 'artist' (got {self.group_by!r})")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"a split seed must be an integer, got {self.seed!r}")

    def split_of(self, label: str | None, key: str, artist: str | None = None) -> str | None:
        """``"train"``/``"val"``/``"test"`` of one labelled row (None when unlabelled).

        ``key`` is the row's ``track_id`` (or ``uri`` when it has none).
        """
        if label is None:
            return None
        if self.group_by == "artist" and artist:
            u = unit_hash(self.seed, "artist", artist)
        else:
            u = unit_hash(self.seed, label, key)
        p_train, p_val, _ = self.ratios
        return "train" if u < p_train else ("val" if u < p_train + p_val else "test")

    def splits(self, table) -> list:
        """The split of each row of ``table`` (columns ``label``, ``track_id``, ``uri``, ``artist``)."""
        labels = table.column("label").to_pylist()
        keys = [t or u for t, u in zip(table.column("track_id").to_pylist(), table.column("uri").to_pylist())]
        artists = table.column("artist").to_pylist()
        return [self.split_of(lab, key, art) for lab, key, art in zip(labels, keys, artists)]

    def to_dict(self) -> dict:
        return {"seed": self.seed, "ratios": list(self.ratios), "group_by": self.group_by}

    def describe(self) -> str:
        """The rule in the words of a console line."""
        return f"split seed {self.seed}"

    @classmethod
    def from_dict(cls, d: dict) -> "SplitRule":
        return cls(seed=int(d.get("seed", 0)), ratios=tuple(d.get("ratios") or (0.7, 0.2, 0.1)),
                   group_by=d.get("group_by"))


@dataclass(frozen=True)
class ManifestSplit:
    """The splits of a manifest's ``split`` column, applied to rows on the fly (no copy).

    The manifest (CSV or Parquet) has a ``split`` column (train/val/test; empty: the row is
    in no split) and ``uri`` and/or ``track_id`` to find each features row: by ``uri``
    first (absolute, or relative to the manifest's folder), then by ``track_id``. Features
    rows the manifest does not name are in no split. Each worker process reads the file
    once (the driver never does).

    Attributes
    ----------
    uri : str
        The manifest (a path or ``s3://`` URI).
    endpoint_url : str, optional
    """

    uri: str
    endpoint_url: str | None = None

    def splits(self, table) -> list:
        """The split of each row of ``table`` (columns ``label``, ``track_id``, ``uri``).

        Raises
        ------
        LabelSourceError
            The manifest is missing, unparseable, lacks ``split`` or both keys, or uses an
            unknown split name.
        """
        by_uri, by_id = _manifest_splits(self.uri, self.endpoint_url, _stamp(self.uri, self.endpoint_url))
        labels = table.column("label").to_pylist()
        out = []
        for lab, uri, tid in zip(labels, table.column("uri").to_pylist(), table.column("track_id").to_pylist()):
            split = by_uri.get(uri)
            if split is None and tid is not None:
                split = by_id.get(tid)
            out.append(split if lab is not None else None)
        return out

    def to_dict(self) -> dict:
        return {"manifest": self.uri}

    def describe(self) -> str:
        """The rule in the words of a console line."""
        return f"split from {self.uri}"


def _stamp(uri: str, endpoint_url: str | None) -> tuple:
    """What identifies the manifest's current content (size, mtime or ETag): a changed file
    is read again by a long-lived worker."""
    from mgr.io.location import Location

    loc = Location.of(uri, endpoint_url=endpoint_url)
    try:
        info = loc.fs.info(loc.path)
    except OSError:
        return ()  # missing: the read says so
    return (info.get("size"), info.get("mtime") or info.get("ETag") or info.get("LastModified"))


@functools.lru_cache(maxsize=2)
def _manifest_splits(uri: str, endpoint_url: str | None, _stamp: tuple = ()) -> tuple[dict, dict]:
    """``({uri: split}, {track_id: split})`` of a split manifest (read once per process and
    content ``_stamp``)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from mgr.datasets.sources.manifest import manifest_uri
    from mgr.errors import StorageError
    from mgr.io.location import Location

    loc = Location.of(uri, endpoint_url=endpoint_url)
    try:
        with loc.fs.open(loc.path, "rb") as fh:
            if uri.lower().endswith((".parquet", ".pq")):
                table = pq.read_table(fh)
            else:
                opts = pcsv.ConvertOptions(column_types={"uri": pa.string(), "track_id": pa.string(),
                                                         "split": pa.string()}, strings_can_be_null=True)
                table = pcsv.read_csv(fh, convert_options=opts)
    except FileNotFoundError:
        raise LabelSourceError(f"split manifest {uri} not found") from None
    except (OSError, pa.ArrowInvalid, StorageError) as exc:
        raise LabelSourceError(f"cannot read split manifest {uri}: {str(exc).splitlines()[0]}") from None
    names = table.column_names
    if "split" not in names or not ({"uri", "track_id"} & set(names)):
        raise LabelSourceError(f"split manifest {uri} needs a 'split' column and 'uri' and/or 'track_id' "
                               f"(columns: {names})")
    words = [None if w is None or str(w).strip() == "" else str(w).strip().lower()
             for w in pc.cast(table.column("split"), pa.string()).to_pylist()]
    bad = sorted({w for w in words if w is not None and w not in SPLIT_WORDS})
    if bad:
        raise LabelSourceError(f"split manifest {uri}: unknown split value(s) {bad[:5]}; use train/val/test")
    splits = [None if w is None else SPLIT_WORDS[w] for w in words]
    base = loc.uri.rsplit("/", 1)[0]
    by_uri: dict = {}
    by_id: dict = {}
    if "uri" in names:
        for u, s in zip(pc.cast(table.column("uri"), pa.string()).to_pylist(), splits):
            if u and s:
                by_uri[manifest_uri(u, base)] = s
    if "track_id" in names:
        for t, s in zip(pc.cast(table.column("track_id"), pa.string()).to_pylist(), splits):
            if t and s:
                by_id[t] = s
    return by_uri, by_id
