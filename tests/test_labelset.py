"""The labels dataset without Ray: schema, window rule, aggregation, atomic parts, resume reads."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mgr.datasets import labelset
from mgr.inference.predict import window_geometry
from mgr.config import PRESETS
from mgr.errors import ConfigError, StorageError
from mgr.inference.windows import cut_windows, window_starts

GENRES = ["rock", "jazz", "pop"]


def _row(uri, probs=None, error=None, **extra):
    row = {"uri": uri, "track_id": uri.rsplit("/", 1)[-1], "duration_s": 40.0, "model_id": "m-1", "error": error}
    if probs is None:
        row.update(labelset.error_result())
    else:
        times = [(15.0 * i, 15.0 * i + 30.0) for i in range(len(probs))]
        row.update(labelset.track_result(np.asarray(probs), times=times, genres=GENRES, top_k=2))
    row.update(extra)
    return row


def test_schema_is_fixed_and_carries_vocabulary():
    s = labelset.labels_schema(GENRES, model_id="m-1")
    assert s.names == ["uri", "track_id", "genre", "confidence", "top_genres", "top_probs", "probs",
                       "segments", "duration_s", "decoded_s", "model_id", "error", "steps"]
    assert s.field("segments").type.value_type == labelset.SEGMENT
    assert s.field("probs").type == pa.list_(pa.float32())
    assert labelset.genres_of(s) == GENRES
    # an all-error table and an all-ok table have the very same schema
    t_err = labelset.to_table([_row("a", error="bad")], s)
    t_ok = labelset.to_table([_row("b", [[0.2, 0.5, 0.3]])], s)
    assert t_err.schema == t_ok.schema == s


def test_track_result_is_mean_of_windows_with_top_k():
    wp = np.array([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.2, 0.6, 0.2]], np.float32)
    times = [(0.0, 30.0), (15.0, 45.0), (30.0, 50.0)]
    r = labelset.track_result(wp, times=times, genres=GENRES, top_k=2)
    np.testing.assert_allclose(r["probs"], wp.mean(0), rtol=1e-6)
    assert r["genre"] == "jazz" and r["confidence"] == pytest.approx(1.7 / 3, rel=1e-6)
    assert r["top_genres"] == ["jazz", "rock"] and len(r["top_probs"]) == 2
    assert [s["genre"] for s in r["segments"]] == ["rock", "jazz", "jazz"]
    assert r["segments"][1]["confidence"] == pytest.approx(0.8)
    assert r["segments"][2]["end_s"] == 50.0 and r["steps"] is None
    assert labelset.track_result(wp, times=times, genres=GENRES, top_k=10)["top_genres"] == ["jazz", "rock", "pop"]
    with pytest.raises(ValueError):
        labelset.track_result(wp, times=times[:2], genres=GENRES, top_k=1)
    # below --min-confidence the genre is "unknown"; the model's view is kept
    unsure = labelset.track_result(wp, times=times, genres=GENRES, top_k=2, min_confidence=0.6)
    assert unsure["genre"] == labelset.UNKNOWN and unsure["top_genres"][0] == "jazz"
    assert unsure["confidence"] == r["confidence"]
    assert labelset.track_result(wp, times=times, genres=GENRES, top_k=2, min_confidence=0.5)["genre"] == "jazz"


def test_windows_rule_and_segment_times():
    cfg = PRESETS["paper"]
    frame_s = cfg.hop_length / cfg.sr
    w, h = window_geometry(window_frames=647, frames_per_second=cfg.sr / cfg.hop_length)
    assert (w, h) == (647, 323)
    assert window_geometry(window_frames=647, frames_per_second=cfg.sr / cfg.hop_length,
                                    window_seconds=30.0, hop_seconds=5.0) == (cfg.frames_for_seconds(30.0), 108)
    with pytest.raises(ConfigError):
        window_geometry(window_frames=647, frames_per_second=21.5, hop_seconds=0)
    # a GTZAN-length clip (W .. W+H-1 frames) is one window: its first W frames
    for n in (w, w + 1, w + h - 1):
        assert window_starts(n, width=w, hop=h).tolist() == [0]
    assert window_starts(w + h, width=w, hop=h).tolist() == [0, h]
    # a short track is one padded window whose segment ends with the track
    mel = np.zeros((4, 100), np.float32)
    win = cut_windows(mel, window_starts(100, width=w, hop=h), width=w, pad=-13.8)
    assert win.shape == (1, 4, w) and win[0, 0, 99] == 0 and win[0, 0, 100] == np.float32(-13.8)
    dur = 100 * frame_s
    assert labelset.segment_times(np.array([0]), width=w, n_frames=100, frame_s=frame_s, duration_s=dur) == [(0.0, dur)]
    # a 4-min track: segments start every hop, never end after the track
    n = cfg.frames_for_seconds(240.0)
    starts = window_starts(n, width=w, hop=h)
    times = labelset.segment_times(starts, width=w, n_frames=n, frame_s=frame_s, duration_s=240.0)
    assert len(times) == (n - w) // h + 1
    assert all(b <= 240.0 and b - a == pytest.approx(w * frame_s) for a, b in times)
    assert times[-1][1] > 240.0 - (h + 1) * frame_s


def test_write_part_is_atomic_and_named_by_content(tmp_path):
    s = labelset.labels_schema(GENRES, model_id="m-1")
    out = str(tmp_path / "labels")
    t = labelset.to_table([_row("/x/b.wav", [[0.1, 0.1, 0.8]]), _row("/x/a.wav", error="empty file")], s)
    p1 = labelset.write_part(t, out)
    p2 = labelset.write_part(t.take([1, 0]), out)
    assert p1 == p2 and os.listdir(out) == [os.path.basename(p1)]  # same uris → same file, no temp left
    back = pq.read_table(out)
    assert back.num_rows == 2 and labelset.genres_of(back.schema) == GENRES
    errors = dict(zip(back.column("uri").to_pylist(), back.column("error").to_pylist()))
    assert errors == {"/x/a.wav": "empty file", "/x/b.wav": None}


def test_output_parts_and_marker(tmp_path):
    """What resume reads of a labels OUTPUT (the planner's reader) and the completion marker."""
    from mgr.io.location import Location
    from mgr.pipelines.catalog import read_output_parts

    s = labelset.labels_schema(GENRES, model_id="m-1")
    out = str(tmp_path / "labels")
    assert labelset.list_parts(Location(out)) == ([], [])
    labelset.write_part(labelset.to_table([_row("/x/a.wav", [[0.1, 0.1, 0.8]])], s), out)
    labelset.write_part(labelset.to_table([_row("/x/b.wav", error="bad"), _row("/x/c.wav", [[1, 0, 0]])], s), out)
    (tmp_path / "labels" / ".tmp-123-part-x.parquet").write_bytes(b"half a file")
    loc = Location(out)
    files, tmp = labelset.list_parts(loc)
    assert len(files) == 2 and [p.rsplit("/", 1)[-1] for p in tmp] == [".tmp-123-part-x.parquet"]
    keys, stats = read_output_parts(loc.fs, files, columns=("uri", "model_id", "error"), retry_errors=False,
                                    remove_unreadable=False)
    assert set(keys.column("uri").to_pylist()) == {"/x/a.wav", "/x/b.wav", "/x/c.wav"}
    assert stats["model_ids"] == {"m-1"} and stats["errors"] == 1 and stats["genres"] == GENRES
    labelset.write_marker(out, {"model_id": "m-1", "counts": {"files": 3}})
    assert labelset.read_marker(out)["counts"]["files"] == 3
    assert pq.read_table(out).num_rows == 3  # the marker does not disturb readers
    (tmp_path / "labels" / "part-junk.parquet").write_text("not parquet")
    files, _ = labelset.list_parts(loc)
    with pytest.raises(StorageError, match="part-junk"):
        read_output_parts(loc.fs, files, columns=("uri", "error"), retry_errors=False, remove_unreadable=False)
    with open(tmp_path / "f.txt", "w") as fh:
        json.dump({}, fh)
    with pytest.raises(StorageError, match="is a file"):
        labelset.list_parts(Location(str(tmp_path / "f.txt")))


def test_labelset_imports_no_ray():
    import subprocess
    import sys

    code = "import sys, mgr.datasets.labelset, mgr.pipelines.label_steps; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
