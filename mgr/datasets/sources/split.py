"""Seeded train/val/test assignment that never moves a track once assigned.

Each track (or each artist, with ``group_by="artist"``) draws a stable number u in [0, 1)
from a hash of ``(seed, genre, key)``; u < p_train → train, < p_train + p_val → val, else
test. Because u depends only on the track itself, adding files later never moves existing
tracks, and each genre is split in the given proportions independently (stratified; exact
up to sampling noise of about ±sqrt(n·p·(1-p)) tracks per genre).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

from mgr.errors import ConfigError

__all__ = ["parse_ratios", "assign_splits", "unit_hash", "SPLIT_NAMES", "SplitRule"]

SPLIT_NAMES = ("train", "val", "test")


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

    def to_dict(self) -> dict:
        return {"seed": self.seed, "ratios": list(self.ratios), "group_by": self.group_by}

    @classmethod
    def from_dict(cls, d: dict) -> "SplitRule":
        return cls(seed=int(d.get("seed", 0)), ratios=tuple(d.get("ratios") or (0.7, 0.2, 0.1)),
                   group_by=d.get("group_by"))
