"""The features dataset as Ray Data streams: one split, its summary, its statistics.

Nothing here brings per-clip data to the driver. Every stream starts with one read task per
Parquet file (:func:`read_split`, through :meth:`Location.arrow_filesystem`, so S3 reads
retry as mgr's own do) whose scan reads only the needed columns and only the usable,
labelled rows of one split (projection and filter pushed down to pyarrow); a
:class:`~mgr.datasets.sources.split.SplitRule` (the extraction's rule, another seed) or a
:class:`~mgr.datasets.sources.split.ManifestSplit` (a manifest's ``split`` column) replaces
the stored ``split`` column by one computed per row. Read and map tasks take fractional CPUs (:data:`INGEST_CPUS`) so training
workers on the cores of a machine do not starve their own ingest. The driver receives only
aggregates, as a stream: counts per split and label (:func:`split_summary`) and per-block
partial sums of the normalisation (:func:`band_statistics`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mgr.datasets.featureset import decode_mels, parquet_files
from mgr.datasets.sources.split import ManifestSplit, SplitRule
from mgr.errors import ConfigError
from mgr.io.location import Location
from mgr.training.arrays import band_stats_from_sums, crop_batch

__all__ = ["INGEST_CPUS", "split_rule", "read_split", "split_summary", "band_statistics", "train_stream",
           "val_stream"]

#: CPUs of each read / decode task (fractional: the ingest shares the machine with the trainers)
INGEST_CPUS = 0.25
#: columns a split rule needs to place a row
_RULE_COLUMNS = ("label", "track_id", "uri", "artist")


def split_rule(manifest: dict, seed: int | None, *, split_manifest: str | None = None,
               endpoint_url: str | None = None) -> SplitRule | ManifestSplit | None:
    """The split a run uses instead of the stored column, or None (the stored ``split``).

    ``seed``: the extraction's split rule (its ratios and grouping, from ``_features.json``)
    with this seed. ``split_manifest``: the ``split`` column of that manifest.
    """
    if seed is not None and split_manifest is not None:
        raise ConfigError("--split-seed and --split-manifest both choose the split; give one")
    if split_manifest is not None:
        return ManifestSplit(split_manifest, endpoint_url=endpoint_url)
    if seed is None:
        return None
    stored = manifest.get("split") or {}
    if stored.get("official"):
        raise ConfigError("these features use the source's official split; a split seed would replace it "
                          "with a random one (drop --split-seed, or extract without --official-split)")
    return SplitRule(seed=seed, ratios=tuple(stored.get("ratios") or (0.7, 0.2, 0.1)),
                     group_by=stored.get("group_by"))


def _ray_data():
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # a read task's MgrError (e.g. a bad --split-manifest) reaches the driver as itself
    ctx.raise_original_map_exception = True
    return ray.data


def _scan_filter(split: str | None, rule: SplitRule | ManifestSplit | None):
    import pyarrow.dataset as pads

    where = pads.field("error").is_null() & pads.field("label").is_valid()
    if rule is None:
        where = where & (pads.field("split") == split if split is not None else pads.field("split").is_valid())
    return where


def _apply_rule(table, *, rule: SplitRule | ManifestSplit, split: str | None, keep: Sequence[str]):
    """Rows of ``split`` under ``rule`` (all rows with their computed split when None; rows
    the rule puts in no split are dropped)."""
    import pyarrow as pa

    splits = rule.splits(table)
    out = table.select(list(keep))
    if split is None:
        known = pa.array([s is not None for s in splits], type=pa.bool_())
        return out.append_column("split", pa.array(splits, type=pa.string())).filter(known)
    return out.filter(pa.array([s == split for s in splits], type=pa.bool_()))


def _read_files(batch, *, features: Location, split: str | None, columns: Sequence[str],
                rule: SplitRule | ManifestSplit | None, rows_per_block: int):
    """Read task: the usable, labelled rows of ``split`` in the files of ``batch["path"]``.

    The column projection and the row filter go down to pyarrow's Parquet scan; the files
    are read a record batch at a time and handed on in blocks of ``rows_per_block`` rows.
    """
    import pyarrow as pa
    import pyarrow.dataset as pads

    from mgr.datasets.featureset import SCHEMA

    fs, _ = features.arrow_filesystem()
    keep = [c for c in columns if not (rule is not None and c == "split")]
    read = sorted(set(keep) | set(_RULE_COLUMNS)) if rule is not None else list(columns)
    where = _scan_filter(split, rule)
    for path in batch["path"]:
        dataset = pads.dataset(str(path), filesystem=fs, format="parquet", schema=SCHEMA)
        for rb in dataset.to_batches(columns=read, filter=where, batch_size=rows_per_block):
            table = pa.Table.from_batches([rb])
            if rule is not None:
                table = _apply_rule(table, rule=rule, split=split, keep=keep)
            if table.num_rows:
                yield table


def read_split(features: Location, split: str | None, *, columns: Sequence[str],
               rule: SplitRule | ManifestSplit | None = None, shuffle_files: bool = False, rows_per_block: int = 256):
    """The usable, labelled rows of ``split`` as a Ray Dataset of ``columns``.

    One read task per Parquet file (fractional CPU), projection and filter pushed down to
    its scan. (Ray's ``read_parquet`` plans each execution with a listing task that takes a
    whole CPU and footer-reading actors: with training workers on every core it waits
    forever, and otherwise costs seconds per epoch.)

    Parameters
    ----------
    features : Location
        A features dataset.
    split : str or None
        ``train``/``val``/``test``; None keeps every labelled row and its ``split`` (which
        ``columns`` may then name).
    columns : sequence of str
        Columns to read.
    rule : SplitRule or ManifestSplit, optional
        Compute the split per row instead of reading the stored column.
    shuffle_files : bool
        Read the files in a new random order each pass (training).
    rows_per_block : int
        Rows per block handed downstream.
    """
    rd = _ray_data()
    files = parquet_files(features)
    ds = rd.from_items([{"path": f} for f in files], override_num_blocks=len(files))
    if shuffle_files:
        ds = ds.randomize_block_order()
    return ds.map_batches(_read_files, batch_size=1, batch_format="numpy", num_cpus=INGEST_CPUS,
                          fn_kwargs={"features": features, "split": split, "columns": list(columns), "rule": rule,
                                     "rows_per_block": rows_per_block})


def _count_block(batch) -> dict:
    """``{"counts": [JSON {split: {label: n}}], "n_mels": [JSON list]}`` of one block."""
    import json

    counts: dict[str, dict[str, int]] = {}
    for split, label in zip(batch.column("split").to_pylist(), batch.column("label").to_pylist()):
        by = counts.setdefault(split, {})
        by[label] = by.get(label, 0) + 1
    n_mels = sorted({int(v) for v in batch.column("n_mels").to_pylist() if v is not None})
    return {"counts": np.array([json.dumps(counts)]), "n_mels": np.array([json.dumps(n_mels)])}


def split_summary(features: Location, *, rule: SplitRule | ManifestSplit | None = None) -> dict:
    """Usable labelled rows per split and label, and the ``n_mels`` values seen.

    Each block counts its rows (no ``mel`` read); the driver adds the counts up as they
    stream in (a few bytes per block).

    Returns
    -------
    dict
        ``{"counts": {split: {label: n}}, "n_mels": sorted list of int}``.
    """
    import json

    ds = read_split(features, None, columns=["split", "label", "n_mels"], rule=rule)
    counts: dict[str, dict[str, int]] = {}
    n_mels: set[int] = set()
    for row in ds.map_batches(_count_block, batch_format="pyarrow", batch_size=None,
                              num_cpus=INGEST_CPUS).iter_rows():
        for split, by in json.loads(row["counts"]).items():
            mine = counts.setdefault(split, {})
            for label, n in by.items():
                mine[label] = mine.get(label, 0) + n
        n_mels.update(json.loads(row["n_mels"]))
    return {"counts": counts, "n_mels": sorted(n_mels)}


def _partial_sums(batch, *, n_mels: int) -> dict:
    """Per-band sum, sum of squares and frame count of a block of clips (float64)."""
    total = np.zeros(n_mels)
    sq = np.zeros(n_mels)
    count = 0
    for m in decode_mels(batch.column("mel"), batch.column("n_mels"), batch.column("n_frames")):
        m64 = m.astype(np.float64)
        total += m64.sum(axis=1)
        sq += np.square(m64).sum(axis=1)
        count += m64.shape[1]
    return {"sum": total[None], "sq": sq[None], "count": np.array([count], dtype=np.int64)}


def band_statistics(features: Location, *, n_mels: int, rule: SplitRule | ManifestSplit | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std of the train split from a distributed pass.

    Each block yields its partial sums (:func:`_partial_sums`); the driver adds them up as
    they stream in (a few KB whatever the dataset size).

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``[n_mels]`` float64 mean and std, as :func:`mgr.training.arrays.band_stats` gives them.
    """
    ds = read_split(features, "train", columns=["n_mels", "n_frames", "mel"], rule=rule)
    sums = ds.map_batches(_partial_sums, batch_format="pyarrow", batch_size=None, num_cpus=INGEST_CPUS,
                          fn_kwargs={"n_mels": n_mels})
    total, sq, count = np.zeros(n_mels), np.zeros(n_mels), 0
    for batch in sums.iter_batches(batch_format="numpy", batch_size=None):
        total += batch["sum"].sum(axis=0)
        sq += batch["sq"].sum(axis=0)
        count += int(batch["count"].sum())
    return band_stats_from_sums(total, sq, count)


class _Targets:
    """Label → class index; for training also cut one window per clip (random or first)."""

    def __init__(self, genres: Sequence[str], *, width: int | None = None, pad: float = 0.0, crop: bool = False):
        self.index = {g: i for i, g in enumerate(genres)}
        self.width, self.pad, self.crop = width, pad, crop

    def labels(self, batch) -> np.ndarray:
        labels = batch.column("label").to_pylist()
        unknown = sorted({lab for lab in labels if lab not in self.index})
        if unknown:
            raise ConfigError(f"labels {unknown} are outside the vocabulary of the features dataset "
                              f"{sorted(self.index)}")
        return np.array([self.index[lab] for lab in labels], dtype=np.int64)

    def windows(self, batch) -> dict:
        """``{"x": [B, n_mels, W] float16, "y": [B] int64}``."""
        mels = decode_mels(batch.column("mel"), batch.column("n_mels"), batch.column("n_frames"))
        rng = np.random.default_rng() if self.crop else None
        x = crop_batch(mels, width=self.width, pad=self.pad, rng=rng, dtype=np.float16)
        return {"x": x, "y": self.labels(batch)}

    def tracks(self, batch):
        """The rows with ``y`` in place of ``label`` (mels stay encoded: voting needs whole tracks)."""
        import pyarrow as pa

        y = self.labels(batch)
        return batch.select(["mel", "n_mels", "n_frames"]).append_column("y", pa.array(y))


def train_stream(features: Location, *, genres: Sequence[str], width: int, pad: float, crop: bool,
                 rule: SplitRule | ManifestSplit | None = None):
    """The train split as model inputs: ``x`` ``[n_mels, W]`` float16 windows and ``y`` class indices.

    Clips are cropped (a random window each epoch when ``crop``, else their first ``W``
    frames, right-padded with ``pad``) inside the ingest tasks, so only windows travel to
    the training workers.
    """
    ds = read_split(features, "train", columns=["label", "n_mels", "n_frames", "mel"], rule=rule, shuffle_files=True)
    fn = _Targets(genres, width=width, pad=pad, crop=crop)
    return ds.map_batches(fn.windows, batch_format="pyarrow", num_cpus=INGEST_CPUS)


def val_stream(features: Location, split: str, *, genres: Sequence[str], rule: SplitRule | ManifestSplit | None = None):
    """Whole tracks of ``split`` (``mel``, ``n_mels``, ``n_frames``, ``y``) for window voting."""
    ds = read_split(features, split, columns=["label", "n_mels", "n_frames", "mel"], rule=rule)
    return ds.map_batches(_Targets(genres).tracks, batch_format="pyarrow", num_cpus=INGEST_CPUS)
