"""Training that streams from storage: statistics, split overrides, no driver-side reads of ``mel``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mgr.datasets.featureset import read_table, to_arrays
from mgr.datasets.sources.split import SplitRule, assign_splits
from mgr.io.location import Location
from mgr.training.arrays import band_stats
from tests.featgen import write_features

TINY = {"channels": 16, "hidden": 16}


def _resplit_as_extraction(root: str, *, seed: int = 0) -> dict:
    """Give a generated features dataset the split the extraction's rule assigns (``seed``)."""
    for name in sorted(os.listdir(root)):
        if not name.endswith(".parquet"):
            continue
        path = os.path.join(root, name)
        table = pq.read_table(path)
        records = [{"uri": u, "track_id": t, "label": lab, "artist": a, "split": None, "error": e}
                   for u, t, lab, a, e in zip(*(table.column(c).to_pylist()
                                                for c in ("uri", "track_id", "label", "artist", "error")))]
        assign_splits(records, ratios=(0.7, 0.2, 0.1), seed=seed, keep_source_split=False)
        splits = pa.array([None if r["error"] else r["split"] for r in records], type=pa.string())
        pq.write_table(table.set_column(table.schema.get_field_index("split"), "split", splits), path)
    manifest_path = os.path.join(root, "_features.json")
    manifest = json.load(open(manifest_path))
    manifest["split"] = {"ratios": [0.7, 0.2, 0.1], "seed": seed, "group_by": None, "official": False}
    json.dump(manifest, open(manifest_path, "w"))
    return manifest


def _listing(root: str) -> dict:
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs}


@pytest.mark.timeout(300)
def test_band_statistics_equal_the_in_memory_computation(ray_local, tmp_path):
    from mgr.pipelines.train_data import band_statistics

    root = str(tmp_path / "feat")
    write_features(root, n_genres=3, per_split={"train": 9, "val": 2, "test": 2}, n_mels=16, frames=40, n_files=3)
    mean, std = band_statistics(Location(root), n_mels=16)
    ref_mean, ref_std = band_stats(to_arrays(read_table(root, splits=["train"], ok_only=True)), n_mels=16)
    assert mean.shape == (16,) and np.allclose(mean, ref_mean, rtol=1e-10, atol=1e-10)
    assert np.allclose(std, ref_std, rtol=1e-10, atol=1e-10)
    # with a split rule the statistics follow the rule's train rows
    rule = SplitRule(seed=3)
    table = read_table(root, columns=["uri", "track_id", "label", "artist", "n_mels", "n_frames", "mel"], ok_only=True)
    keep = [i for i, (lab, t, u) in enumerate(zip(*(table.column(c).to_pylist() for c in ("label", "track_id", "uri"))))
            if rule.split_of(lab, t or u) == "train"]
    ref_mean, _ = band_stats(to_arrays(table.take(keep)), n_mels=16)
    assert np.allclose(band_statistics(Location(root), n_mels=16, rule=rule)[0], ref_mean, rtol=1e-10, atol=1e-10)


@pytest.mark.timeout(300)
def test_split_override_reproduces_the_extraction_split_without_a_copy(ray_local, tmp_path):
    from mgr.pipelines.train_data import read_split, split_rule, split_summary

    root = str(tmp_path / "feat")
    write_features(root, n_genres=3, per_split={"train": 10, "val": 10, "test": 10}, n_mels=8, frames=20)
    manifest = _resplit_as_extraction(root, seed=0)
    before = _listing(str(tmp_path))
    stored = {r["uri"]: r["split"] for r in read_table(root, columns=["uri", "split"], ok_only=True).to_pylist()}
    loc = Location(root)

    def computed(seed):
        rows = read_split(loc, None, columns=["uri", "split"], rule=split_rule(manifest, seed)).take_all()
        return {r["uri"]: r["split"] for r in rows}

    assert computed(0) == stored and len(stored) == 90
    seed1 = computed(1)
    assert set(seed1) == set(stored) and sum(seed1[u] != stored[u] for u in stored) > 20
    counts = split_summary(loc, rule=split_rule(manifest, 1))["counts"]
    assert {s: sum(by.values()) for s, by in counts.items()} == {s: list(seed1.values()).count(s)
                                                                 for s in ("train", "val", "test")}
    assert split_summary(loc, rule=split_rule(manifest, 0)) == split_summary(loc)
    assert _listing(str(tmp_path)) == before  # nothing written: no copy of the dataset
    manifest["split"]["official"] = True
    from mgr.errors import ConfigError

    with pytest.raises(ConfigError, match="official split"):
        split_rule(manifest, 1)


@pytest.mark.timeout(400)
def test_split_manifest_trains_on_its_split_column_without_a_copy(ray_local, tmp_path, capsys):
    """``--split-manifest``: a manifest's ``split`` column (rows named by uri, relative to the
    manifest, or by track_id; unnamed rows left out) replaces the stored split, read by the
    workers; ``mgr train`` records it in run.json; a bad manifest is a one-line error."""
    import pandas as pd

    from mgr.cli import main
    from mgr.datasets.sources.split import ManifestSplit
    from mgr.pipelines.train_data import read_split, split_summary

    root = str(tmp_path / "feat")
    write_features(root, n_genres=3, per_split={"train": 4, "val": 4, "test": 4}, n_mels=8, frames=20, n_files=2)
    rows = read_table(root, columns=["uri", "track_id", "split"], ok_only=True).to_pylist()
    assert len(rows) == 36
    want, lines = {}, []
    for i, r in enumerate(rows[:30]):  # the last 6 rows: not in the manifest, in no split
        split = ("train", "val", "test")[i % 3]
        want[r["uri"]] = split
        word = {"train": "training", "val": "Validation", "test": "test"}[split]
        if i % 2:  # by track_id
            lines.append({"uri": None, "track_id": r["track_id"], "split": word})
        else:  # by uri relative to the manifest's folder
            lines.append({"uri": os.path.relpath(r["uri"], str(tmp_path / "lists")), "track_id": None, "split": word})
    (tmp_path / "lists").mkdir()
    man = str(tmp_path / "lists" / "splits.csv")
    pd.DataFrame(lines).to_csv(man, index=False)
    before = _listing(root)
    rule = ManifestSplit(man)
    got = {r["uri"]: r["split"] for r in read_split(Location(root), None, columns=["uri", "split"], rule=rule).take_all()}
    assert got == want
    counts = split_summary(Location(root), rule=rule)["counts"]
    assert {s: sum(by.values()) for s, by in counts.items()} == {"train": 10, "val": 10, "test": 10}
    out = str(tmp_path / "model")
    assert main(["train", root, out, "--model", "cnn", "--preset", "mgr", "--workers", "1", "--epochs", "1",
                 "--crop-seconds", "0.4", "--batch-size", "5", "--split-manifest", man]) == 0
    run = json.load(open(os.path.join(out, "run.json")))
    assert run["split"] == {"manifest": man}
    history = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert history[0]["samples"] == 10 and history[0]["val_samples"] == 10
    assert _listing(root) == before  # nothing written next to the features
    capsys.readouterr()
    bad = tmp_path / "lists" / "bad.csv"
    bad.write_text("uri,split\nx.wav,holdout\n")
    proc = subprocess.run([sys.executable, "-m", "mgr.cli", "train", root, str(tmp_path / "m2"), "--model", "cnn",
                           "--split-manifest", str(bad), "--num-cpus", "1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[0] == (f"mgr train: error: split manifest {bad}: unknown split value(s) "
                                           "['holdout']; use train/val/test"), proc.stderr[-3000:]
    assert main(["train", root, str(tmp_path / "m3"), "--model", "cnn", "--split-seed", "1", "--split-manifest", man]) == 2
    assert "give one" in capsys.readouterr().err


@pytest.fixture
def s3_features(tmp_path, s3_bucket):
    fs, bucket = s3_bucket
    local = str(tmp_path / "feat")
    write_features(local, n_genres=3, per_split={"train": 12, "val": 7, "test": 5}, n_mels=16, frames=48, n_files=3)
    for name in os.listdir(local):
        fs.put_file(os.path.join(local, name), f"{bucket}/feat/{name}")
    return fs, bucket


@pytest.mark.timeout(600)
def test_training_from_s3_never_reads_mel_on_the_driver(ray_local, s3_features, s3_endpoint, tmp_path, monkeypatch):
    """The driver lists the dataset and reads ``_features.json``; every Parquet byte is read by workers."""
    import s3fs

    from mgr.pipelines.train import train
    from mgr.pipelines.train_config import TrainJobConfig

    fs, bucket = s3_features
    fetched: dict[str, int] = {}
    real_fetch = s3fs.core.S3File._fetch_range

    def counting_fetch(self, start, end):
        fetched[self.path] = fetched.get(self.path, 0) + (end - start)
        return real_fetch(self, start, end)

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counting_fetch)  # this process only: the driver
    features = Location(f"s3://{bucket}/feat", endpoint_url=s3_endpoint)
    out = str(tmp_path / "model")
    summary = train(TrainJobConfig(features, out, model="cnn", preset="mgr", workers=2, epochs=2, crop_seconds=0.5,
                                   batch_size=12, model_options=TINY, verbose=False))
    assert fetched and all(not p.endswith(".parquet") for p in fetched), fetched  # only _features.json
    assert sum(fetched.values()) < 10_000
    history = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert h["samples"] == 36 and h["val_samples"] == 21  # every val track once on 2 workers (21 is odd)
        assert h["val_loss"] > 0 and h["samples_per_s"] > 0 and 0 <= h["data_wait_share"] <= 1
    report = json.load(open(os.path.join(out, "report.json")))
    assert summary["test"]["n"] == 15 and sum(map(sum, report["confusion"])) == 15
    cal = report["calibration"]
    assert cal["temperature"] == summary["temperature"] > 0
    assert {"ece_before", "ece_after", "coverage", "reliability_before", "reliability_after"} <= set(cal)
    assert cal["coverage"][0]["kept"] == 15 and len(cal["reliability_after"]) == 10
    spec = json.load(open(os.path.join(out, "model.json")))
    assert spec["temperature"] == summary["temperature"]
    run = json.load(open(os.path.join(out, "run.json")))
    assert len(run["normalization"]["mean"]) == 16 and run["split"] is None
