"""Integration: the extraction job on a real local Ray, from a folder and from S3 (moto)."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from mgr.audio.decode import decode
from mgr.cli import main
from mgr.config import PRESETS
from mgr.pipelines.catalog_config import ExtractConfig
from mgr.pipelines.extract import extract
from mgr.audio.features import log_mel
from mgr.datasets.featureset import decode_mel, read_manifest
from tests.audiogen import genre_tree, music_like, write_audio

pytestmark = pytest.mark.timeout(300)


def broken_files(root):
    """Files that must come out as error rows; returns {path: expected error fragment}."""
    os.makedirs(root / "drone", exist_ok=True)
    (root / "drone" / "empty.wav").write_bytes(b"")
    (root / "techno" / "readme.mp3").write_text("definitely not an mp3 " * 100)
    flac = write_audio(str(root / "chime" / "cut.flac"), music_like("chime", 2.0))
    with open(flac, "r+b") as fh:
        fh.truncate(60)  # header only: no frame survives
    write_audio(str(root / "drone" / "nothing.wav"), np.zeros(0, np.float32))
    (root / "chime" / "phone.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A " + b"\x00" * 200)
    return {
        str(root / "drone" / "empty.wav"): "empty file",
        str(root / "techno" / "readme.mp3"): "not decodable",
        str(root / "chime" / "cut.flac"): "",
        str(root / "drone" / "nothing.wav"): "no audio samples",
        str(root / "chime" / "phone.m4a"): "needs ffmpeg",
    }


def test_extract_local_folder_accounts_for_every_file(ray_local, tmp_path):
    src = tmp_path / "in"
    good = genre_tree(str(src), per_style=4, seconds=2.5)
    broken = broken_files(src)
    out = str(tmp_path / "features")
    summary = extract(ExtractConfig(str(src), out, labels="folder", seed=3))

    table = pq.read_table(out)  # one schema across all files: one call reads the dataset
    rows = {r["uri"]: r for r in table.to_pylist()}
    assert len(rows) == table.num_rows == len(good) + len(broken)
    assert set(rows) == set(good) | set(broken)
    for path, fragment in broken.items():
        assert rows[path]["error"], path
        assert fragment in rows[path]["error"]
        assert rows[path]["mel"] is None and rows[path]["split"] is None
    for path in good:
        r = rows[path]
        assert r["error"] is None and r["label"] == path.split("/")[-2]
        assert r["split"] in ("train", "val", "test")
        mel = decode_mel(r["mel"], r["n_mels"], r["n_frames"])
        ref = log_mel(decode(path)[0], cfg=PRESETS["paper"])
        assert mel.shape == ref.shape == (128, r["n_frames"])
        np.testing.assert_allclose(mel.astype(np.float32), ref, atol=0.02, rtol=1e-3)  # float16 storage
        assert r["duration_s"] == pytest.approx(2.5, abs=0.05)
    manifest = read_manifest(out)
    assert manifest["genres"] == ["chime", "drone", "techno"]
    assert manifest["feature_config"]["hop_length"] == 1024 and manifest["feature_config"]["preset"] == "paper"
    counts = manifest["counts"]
    assert counts["files"] == len(rows) and counts["errors"] == len(broken) and counts["ok"] == len(good)
    assert sum(counts["by_split"].values()) == len(good)
    assert sum(counts["errors_by_kind"].values()) == len(broken)
    assert summary["run"]["files_extracted"] == len(rows)


def test_extract_resumes_and_only_adds_new_files(ray_local, tmp_path):
    src = tmp_path / "in"
    first = genre_tree(str(src), styles=("drone", "chime"), per_style=2, seconds=1.5, formats=("wav", "ogg"))
    out = str(tmp_path / "features")
    extract(ExtractConfig(str(src), out, labels="folder"))
    again = extract(ExtractConfig(str(src), out, labels="folder"))
    assert again["run"]["files_extracted"] == 0
    split_before = {r["uri"]: r["split"] for r in pq.read_table(out).to_pylist()}
    added = write_audio(str(src / "chime" / "chime.new.flac"), music_like("chime", 1.5, seed=9))
    grown = extract(ExtractConfig(str(src), out, labels="folder"))
    assert grown["run"]["files_extracted"] == 1
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["uri"] for r in rows) == sorted(first + [added])  # no duplicates
    assert all(split_before[r["uri"]] == r["split"] for r in rows if r["uri"] in split_before)
    redo = extract(ExtractConfig(str(src), out, labels="folder", overwrite=True))
    assert redo["run"]["files_extracted"] == len(first) + 1
    assert pq.read_table(out).num_rows == len(first) + 1


def test_extract_from_and_to_s3(ray_local, tmp_path, s3_bucket, s3_endpoint):
    fs, bucket = s3_bucket
    src = tmp_path / "in"
    good = genre_tree(str(src), styles=("drone", "techno"), per_style=2, seconds=1.5, formats=("mp3", "flac"))
    (src / "techno" / "junk.ogg").write_bytes(b"OggS" + b"\x01" * 100)
    fs.put(str(src), f"{bucket}/catalog", recursive=True)
    summary = extract(ExtractConfig(f"s3://{bucket}/catalog", f"s3://{bucket}/features", labels="folder", endpoint_url=s3_endpoint))
    assert summary["counts"]["files"] == len(good) + 1
    with fs.open(f"{bucket}/features/_features.json") as fh:
        assert json.load(fh)["counts"]["errors"] == 1
    files = [f for f in fs.find(f"{bucket}/features") if f.endswith(".parquet")]
    table = pq.read_table(files, filesystem=fs)
    uris = table.column("uri").to_pylist()
    assert sorted(uris) == sorted(f"s3://{bucket}/catalog/" + os.path.relpath(p, src) for p in good) + [f"s3://{bucket}/catalog/techno/junk.ogg"] or \
        len(set(uris)) == len(uris) == len(good) + 1
    assert set(table.column("label").to_pylist()) == {"drone", "techno"}


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    assert main(["extract", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    assert main(["extract", str(tmp_path / "empty"), str(tmp_path / "o")]) == 2
    assert "no audio files found" in capsys.readouterr().err
    write_audio(str(tmp_path / "one" / "a" / "x.wav"), np.zeros(100, np.float32))
    assert main(["extract", str(tmp_path / "one"), str(tmp_path / "o"), "--labels", "genres.csv"]) == 2
    assert "unknown label source" in capsys.readouterr().err
    assert main(["extract", str(tmp_path / "one"), str(tmp_path / "o"), "--labels", f"fma:{tmp_path}/tracks.csv"]) == 2
    assert "cannot read FMA tracks.csv" in capsys.readouterr().err


def test_cli_error_has_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mgr.cli", "extract", str(tmp_path / "nope"), str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "does not exist" in proc.stderr
