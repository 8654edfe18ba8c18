"""Seeded train/val/test assignment that never moves a track once assigned.

Each track (or each artist, with ``group_by="artist"``) draws a stable number u in [0, 1)
from a hash of ``(seed, genre, key)``; u < p_train → train, < p_train + p_val → val, else
test. Because u depends only on the track itself, adding files later never moves existing
tracks, and each genre is split in the given proportions independently (stratified; exact
up to sampling noise of about ±sqrt(n·p·(1-p)) tracks per genre).
"""

from __future__ import annotations

import hashlib
from typing import Sequence

from mgr.errors import ConfigError

__all__ = ["parse_ratios", "assign_splits", "unit_hash", "SPLIT_NAMES"]

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
