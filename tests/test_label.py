"""``mgr label`` end to end on a real local Ray, real codecs, real Parquet and a moto S3 server."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mgr.datasets import labelset
from mgr.audio.decode import decode
from mgr.cli import main as cli_main
from mgr.config import PRESETS
from mgr.errors import ConfigError, ModelError
from mgr.audio.features import log_mel, pad_value
from mgr.inference.windows import cut_windows, window_starts
from mgr.pipelines.catalog_config import LabelConfig
from mgr.pipelines.label import label_catalog
from mgr.models import build_model
from mgr.models.modeldir import load_model_dir, save_model_dir
from tests.audiogen import genre_tree, music_like, write_audio
from tests.conftest import TEST_CREDENTIALS

# Ray workers inherit the environment of the first ray.init: give them the fake S3 credentials.
for _k, _v in TEST_CREDENTIALS.items():
    os.environ.setdefault(_k, _v)

GENRES = ["drone", "techno", "chime"]
CFG = PRESETS["paper"]
BROKEN = ("bad/empty.wav", "bad/text.mp3", "bad/truncated.flac")


def _model_dir(path, arch, *, name=None, seed=0, **spec_over):
    torch.manual_seed(seed)
    model = build_model(arch, n_classes=len(GENRES), n_mels=CFG.n_mels)
    rng = np.random.default_rng(seed)
    spec = {
        "name": name or f"test-{arch}",
        "architecture": arch,
        "model_config": {"n_classes": len(GENRES), "n_mels": CFG.n_mels},
        "feature_config": CFG.to_dict(),
        "genres": GENRES,
        "window_frames": CFG.clip_frames,
        "pad_value": pad_value(CFG),
        "normalization": {"mean": (rng.normal(-4, 1, CFG.n_mels)).tolist(), "std": rng.uniform(1, 3, CFG.n_mels).tolist()},
        "metrics": {},
        "provenance": {"test": True},
    }
    if arch == "crnn":
        spec["average"] = "weighted"
    spec.update(spec_over)
    save_model_dir(str(path), model=model, spec=spec)
    return str(path)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Short clips in four formats, two multi-minute songs, three broken files."""
    root = tmp_path_factory.mktemp("catalog")
    genre_tree(str(root), styles=tuple(GENRES), per_style=2, seconds=4.0)
    write_audio(str(root / "long" / "song_a.flac"), music_like("techno", 150.0, seed=7))
    write_audio(str(root / "long" / "song_b.mp3"), music_like("chime", 75.0, seed=8))
    write_audio(str(root / "long" / "gtzan_like.wav"), music_like("drone", 30.5, seed=9))
    (root / "bad").mkdir()
    (root / "bad" / "empty.wav").write_bytes(b"")
    (root / "bad" / "text.mp3").write_text("this is not an mp3\n" * 20)
    write_audio(str(root / "bad" / "full.flac"), music_like("drone", 10.0, seed=3))
    data = (root / "bad" / "full.flac").read_bytes()
    (root / "bad" / "truncated.flac").write_bytes(data[:60])
    (root / "bad" / "full.flac").unlink()
    return str(root)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"cnn": _model_dir(root / "cnn", "cnn"), "crnn": _model_dir(root / "crnn", "crnn", seed=1)}


def _direct_probs(path, model_dir):
    """Reference: decode + log-mel + windows + normalise + forward, in process."""
    lm = load_model_dir(model_dir)
    y, _, _ = decode(path, sr=CFG.sr)
    mel = log_mel(y, cfg=CFG)
    starts = window_starts(mel.shape[1], width=lm.window_frames, hop=lm.window_frames // 2)
    x = torch.from_numpy(lm.normalize(cut_windows(mel, starts, width=lm.window_frames, pad=lm.pad_value)))
    with torch.no_grad():
        return lm.model(x).exp().numpy(), starts


@pytest.mark.timeout(240)
def test_label_local_catalog(ray_local, catalog, models, tmp_path):
    out = str(tmp_path / "labels")
    s = label_catalog(LabelConfig(catalog, out, model_dir=models["cnn"], top_k=2, batch_size=3, rows_per_file=4))
    n_files = 6 + 3 + 3
    t = pq.read_table(out)  # one schema across all parts
    assert t.num_rows == n_files == s["counts"]["files"] == s["run"]["files"]
    assert len(set(t.column("uri").to_pylist())) == n_files
    assert labelset.genres_of(t.schema) == GENRES
    rows = {os.path.relpath(r["uri"], catalog): r for r in t.to_pylist()}
    for rel in ("bad/empty.wav", "bad/text.mp3"):
        assert rows[rel]["error"] and rows[rel]["genre"] is None and rows[rel]["probs"] is None
    assert rows["bad/empty.wav"]["error"] == "empty file (0 bytes)"
    trunc = rows["bad/truncated.flac"]
    assert trunc["error"] or trunc["duration_s"] < 10.0
    assert s["run"]["errors"] == sum(r["error"] is not None for r in rows.values()) >= 2
    frame_s = CFG.hop_length / CFG.sr
    for rel, r in rows.items():
        assert r["model_id"] == s["model_id"] and r["track_id"] == os.path.splitext(os.path.basename(rel))[0]
        if r["error"]:
            continue
        assert r["genre"] in GENRES and r["top_genres"][0] == r["genre"] and len(r["top_probs"]) == 2
        assert sum(r["probs"]) == pytest.approx(1.0, abs=1e-4) and r["confidence"] == pytest.approx(max(r["probs"]))
        n_frames = CFG.frames_for_samples(round(r["duration_s"] * CFG.sr))
        expected = window_starts(n_frames, width=647, hop=323)
        segs = r["segments"]
        assert [round(g["start_s"] / frame_s) for g in segs] == expected.tolist()
        assert all(0 <= g["start_s"] < g["end_s"] <= r["duration_s"] + 1e-9 for g in segs)
        assert r["steps"] is None
    assert len(rows["long/song_a.flac"]["segments"]) == 8  # 150 s: windows at 0, 15, ..., 105 s
    assert len(rows["long/gtzan_like.wav"]["segments"]) == 1  # W..W+H-1 frames: one window
    assert rows["drone/drone.00000.wav"]["segments"][0]["end_s"] == pytest.approx(4.0, abs=0.01)
    # labels equal a direct forward pass of the same model on the same windows
    for rel in ("long/song_a.flac", "drone/drone.00001.flac"):
        probs, starts = _direct_probs(os.path.join(catalog, rel), models["cnn"])
        assert len(starts) == len(rows[rel]["segments"])
        np.testing.assert_allclose(rows[rel]["probs"], probs.mean(0), atol=1e-5)
        np.testing.assert_allclose([g["confidence"] for g in rows[rel]["segments"]], probs.max(1), atol=1e-5)
    marker = labelset.read_marker(out)
    assert marker["model_id"] == s["model_id"] and marker["counts"]["files"] == n_files and marker["complete"]
    assert sum(s["run"]["genres"].values()) + s["run"]["errors"] == n_files
    assert s["run"]["files_per_s"] > 0 and s["run"]["audio_minutes_per_s"] > 0


@pytest.mark.timeout(300)
def test_resume_foreign_model_and_overwrite(ray_local, catalog, models, tmp_path):
    sub = tmp_path / "sub"
    shutil.copytree(os.path.join(catalog, "drone"), sub / "drone")
    shutil.copytree(os.path.join(catalog, "bad"), sub / "bad")
    out = str(tmp_path / "labels")
    first = label_catalog(LabelConfig(str(sub), out, model_dir=models["cnn"], rows_per_file=2))
    assert first["run"]["files"] == 5
    # the catalog grows: only the new files are labeled
    shutil.copytree(os.path.join(catalog, "chime"), sub / "chime")
    grown = label_catalog(LabelConfig(str(sub), out, model_dir=models["cnn"], rows_per_file=2))
    assert grown["run"]["files"] == 2 and grown["run"]["files_skipped_already_done"] == 5
    # an interrupted run: a part file is lost, a half-written temp file is left behind
    parts = sorted(p for p in os.listdir(out) if p.startswith("part-"))
    lost = pq.read_table(os.path.join(out, parts[0])).num_rows
    kept = {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in parts[1:]}
    os.remove(os.path.join(out, parts[0]))
    os.remove(os.path.join(out, labelset.MARKER_NAME))
    with open(os.path.join(out, ".tmp-dead-part-x.parquet"), "wb") as fh:
        fh.write(b"PAR1 half")
    resumed = label_catalog(LabelConfig(str(sub), out, model_dir=models["cnn"], rows_per_file=2))
    assert resumed["run"]["files"] == lost and resumed["complete"]
    assert all(os.stat(os.path.join(out, p)).st_mtime_ns == m for p, m in kept.items())
    t = pq.read_table(out)
    uris = t.column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == 7 and not any(n.startswith(".tmp-") for n in os.listdir(out))
    # nothing left to do: no pipeline, same rows, a fresh marker
    again = label_catalog(LabelConfig(str(sub), out, model_dir=models["cnn"]))
    assert again["run"]["files"] == 0 and pq.read_table(out).num_rows == 7
    # another model is refused on this OUTPUT ...
    with pytest.raises(ConfigError, match="--overwrite"):
        label_catalog(LabelConfig(str(sub), out, model_dir=models["crnn"]))
    # ... unless --overwrite: everything is relabeled by it, with per-step distributions
    over = label_catalog(LabelConfig(str(sub), out, model_dir=models["crnn"], overwrite=True, per_step=True, batch_size=2))
    assert over["run"]["files"] == 7 and over["model_id"] != first["model_id"]
    t = pq.read_table(out)
    assert t.num_rows == 7 and set(t.column("model_id").to_pylist()) == {over["model_id"]}
    row = next(r for r in t.to_pylist() if r["error"] is None)
    steps = np.asarray(row["steps"])
    lm = load_model_dir(models["crnn"])
    assert steps.shape[0] == len(row["segments"]) and steps.shape[2] == len(GENRES)
    np.testing.assert_allclose(steps.sum(-1), 1.0, atol=1e-4)
    x = torch.zeros(1, CFG.n_mels, 647)
    assert steps.shape[1] == lm.model.step_probs(x).shape[1]
    with pytest.raises(ConfigError, match="crnn"):
        label_catalog(LabelConfig(str(sub), out, model_dir=models["cnn"], overwrite=True, per_step=True))


@pytest.mark.timeout(240)
def test_label_s3_catalog_via_cli(ray_local, s3_bucket, s3_endpoint, catalog, models, capsys):
    fs, bucket = s3_bucket
    for rel in ("drone/drone.00000.wav", "techno/techno.00001.ogg", "long/song_b.mp3", "bad/text.mp3"):
        fs.put(os.path.join(catalog, rel), f"{bucket}/music/{rel}")
    out = f"s3://{bucket}/labels"
    args = ["label", f"s3://{bucket}/music", out, "--model", models["cnn"], "--endpoint-url", s3_endpoint, "--top-k", "3"]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "labeled 4 file(s)" in text and "errors this run: 1" in text and "audio-min/s" in text
    with fs.open(f"{bucket}/labels/{labelset.MARKER_NAME}") as fh:
        assert b'"complete": true' in fh.read()
    t = pq.read_table(f"{bucket}/labels", filesystem=fs)
    assert sorted(t.column("uri").to_pylist()) == sorted(f"s3://{bucket}/music/{r}" for r in (
        "drone/drone.00000.wav", "techno/techno.00001.ogg", "long/song_b.mp3", "bad/text.mp3"))
    song = next(r for r in t.to_pylist() if r["uri"].endswith("song_b.mp3"))
    n_frames = CFG.frames_for_samples(round(song["duration_s"] * CFG.sr))
    assert len(song["segments"]) == len(window_starts(n_frames, width=647, hop=323)) >= 3
    assert len(song["top_genres"]) == 3 and song["duration_s"] == pytest.approx(75.0, abs=0.2)
    fs.put(os.path.join(catalog, "chime/chime.00000.ogg"), f"{bucket}/music/chime/chime.00000.ogg")
    assert cli_main(args + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["run"]["files"] == 1 and summary["counts"]["files"] == 5 and summary["complete"]
    fs.invalidate_cache()
    assert pq.read_table(f"{bucket}/labels", filesystem=fs).num_rows == 5
    # a Parquet manifest on S3 (no listing of the bucket): track_id comes out in the labels
    import pyarrow as pa

    with fs.open(f"{bucket}/lists/m.parquet", "wb") as fh:
        pq.write_table(pa.table({"uri": [f"s3://{bucket}/music/long/song_b.mp3", "../music/bad/text.mp3"],
                                 "track_id": ["song-b", "junk"], "rank": [1, 2]}), fh)
    out2 = f"s3://{bucket}/labels-manifest"
    assert cli_main(["label", f"manifest:s3://{bucket}/lists/m.parquet", out2, "--model", models["cnn"],
                     "--endpoint-url", s3_endpoint]) == 0
    fs.invalidate_cache()
    t = pq.read_table(f"{bucket}/labels-manifest", filesystem=fs).to_pylist()
    got = {r["track_id"]: (r["rank"], r["uri"], r["error"]) for r in t}
    assert got["song-b"] == ("1", f"s3://{bucket}/music/long/song_b.mp3", None)
    assert got["junk"][:2] == ("2", f"s3://{bucket}/music/bad/text.mp3") and "not decodable" in got["junk"][2]


def test_model_preset_mismatch_is_a_clear_error(tmp_path, catalog, capsys):
    bad_mels = _model_dir(tmp_path / "m1", "cnn", feature_config={**CFG.to_dict(), "n_mels": 64}, normalization=None)
    with pytest.raises(ModelError, match="inconsistent"):
        label_catalog(LabelConfig(catalog, str(tmp_path / "o1"), model_dir=bad_mels))
    unknown = _model_dir(tmp_path / "m2", "cnn", feature_config={**CFG.to_dict(), "preset": "studio"})
    assert cli_main(["label", catalog, str(tmp_path / "o2"), "--model", unknown]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'studio'" in err and "Traceback" not in err
    assert cli_main(["label", catalog, str(tmp_path / "o3"), "--model", str(tmp_path / "nothing")]) == 2
    assert "not a model directory" in capsys.readouterr().err
    assert cli_main(["label", catalog, str(tmp_path / "o4"), "--model", unknown, "--actors", "3,1"]) == 2
    assert not os.path.exists(tmp_path / "o1") and not os.path.exists(tmp_path / "o2")


def test_label_help_shows_how_to_read(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["label", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "pandas.read_parquet(OUTPUT)" in text and "--per-step" in text and "--overwrite" in text


@pytest.mark.timeout(240)
def test_excerpts_and_unknown(ray_local, models, tmp_path):
    """--max-windows decodes only spread excerpts whose windows equal the whole track's;
    --min-confidence turns unsure tracks into "unknown"."""
    cat = tmp_path / "cat"
    write_audio(str(cat / "long.wav"), music_like("bossa", 200.0, seed=11))  # native 22050 Hz: no resampling
    write_audio(str(cat / "long.flac"), music_like("rumble", 180.0, seed=12))
    write_audio(str(cat / "short.ogg"), music_like("chime", 20.0, seed=13))
    full = label_catalog(LabelConfig(str(cat), str(tmp_path / "full"), model_dir=models["cnn"]))
    part = label_catalog(LabelConfig(str(cat), str(tmp_path / "part"), model_dir=models["cnn"], max_windows=3, min_confidence=0.99))
    f = {os.path.basename(r["uri"]): r for r in pq.read_table(str(tmp_path / "full")).to_pylist()}
    p = {os.path.basename(r["uri"]): r for r in pq.read_table(str(tmp_path / "part")).to_pylist()}
    for name in ("long.wav", "long.flac"):
        fs, ps = f[name]["segments"], p[name]["segments"]
        idx = np.unique(np.round(np.linspace(0, len(fs) - 1, 3)).astype(int))
        assert [g["start_s"] for g in ps] == pytest.approx([fs[i]["start_s"] for i in idx])
        assert p[name]["decoded_s"] < 0.6 * p[name]["duration_s"] and f[name]["decoded_s"] == f[name]["duration_s"]
        tol = 1e-5 if name == "long.wav" else 2e-3
        np.testing.assert_allclose([g["confidence"] for g in ps], [fs[i]["confidence"] for i in idx], atol=tol)
        assert p[name]["genre"] == "unknown" and p[name]["top_genres"][0] in GENRES
    assert len(p["short.ogg"]["segments"]) == 1 and p["short.ogg"]["decoded_s"] == f["short.ogg"]["duration_s"]
    assert part["run"]["unknown"] == 3 and part["run"]["genres"] == {"unknown": 3}
    assert part["run"]["audio_minutes_skipped"] > 0.4 * part["run"]["audio_minutes"]
    assert full["run"]["audio_minutes_skipped"] == 0


@pytest.mark.timeout(240)
def test_retry_storage_errors(ray_local, models, tmp_path):
    """A file that could not be read (a dangling link: a vanished mount) is a "storage:" error;
    --retry-errors re-attempts only such rows and reports what stayed broken."""
    cat = tmp_path / "cat"
    write_audio(str(cat / "a.wav"), music_like("drone", 3.0, seed=1))
    (cat / "text.mp3").write_text("not audio")
    target = tmp_path / "elsewhere" / "b.flac"
    os.symlink(target, cat / "b.flac")
    out = str(tmp_path / "labels")
    first = label_catalog(LabelConfig(str(cat), out, model_dir=models["cnn"]))
    rows = {os.path.basename(r["uri"]): r for r in pq.read_table(out).to_pylist()}
    assert rows["b.flac"]["error"].startswith(labelset.RETRYABLE_PREFIX)
    assert not rows["text.mp3"]["error"].startswith(labelset.RETRYABLE_PREFIX) and first["run"]["errors"] == 2
    assert label_catalog(LabelConfig(str(cat), out, model_dir=models["cnn"]))["run"]["files"] == 0
    still = label_catalog(LabelConfig(str(cat), out, model_dir=models["cnn"], retry_errors=True))
    assert still["run"]["retried"] == 1 and still["run"]["still_broken"] == 1 and still["run"]["files"] == 1
    assert pq.read_table(out).num_rows == 3
    write_audio(str(target), music_like("chime", 3.0, seed=2))  # the fault is removed
    fixed = label_catalog(LabelConfig(str(cat), out, model_dir=models["cnn"], retry_errors=True))
    assert fixed["run"]["retried"] == 1 and fixed["run"]["still_broken"] == 0 and fixed["counts"]["errors"] == 1
    t = pq.read_table(out)
    rows = {os.path.basename(r["uri"]): r for r in t.to_pylist()}
    assert t.num_rows == 3 and rows["b.flac"]["error"] is None and rows["b.flac"]["genre"] in GENRES
    assert rows["a.wav"]["error"] is None and rows["text.mp3"]["error"]


@pytest.mark.timeout(180)
def test_manifest_catalog_with_track_ids(ray_local, catalog, models, tmp_path):
    man = tmp_path / "lists" / "catalog.csv"
    man.parent.mkdir()
    shutil.copy(os.path.join(catalog, "chime", "chime.00000.ogg"), man.parent / "rel.ogg")
    man.write_text(
        "uri,track_id,album\n"
        f"{os.path.join(catalog, 'drone', 'drone.00000.wav')},T-1,first\n"
        "rel.ogg,T-2,\n"
        f"{os.path.join(catalog, 'bad', 'text.mp3')},,third\n"
    )
    out = str(tmp_path / "labels")
    s = label_catalog(LabelConfig(f"manifest:{man}", out, model_dir=models["cnn"]))
    rows = {r["track_id"]: r for r in pq.read_table(out).to_pylist()}
    assert set(rows) == {"T-1", "T-2", "text"} and s["counts"]["files"] == 3
    assert rows["T-2"]["uri"] == str(man.parent / "rel.ogg") and rows["T-2"]["genre"] in GENRES
    assert rows["T-1"]["album"] == "first" and rows["T-2"]["album"] is None and rows["text"]["error"]
    with pytest.raises(Exception, match="no 'uri' column"):
        (tmp_path / "bad.csv").write_text("path\nx.wav\n")
        label_catalog(LabelConfig(f"manifest:{tmp_path / 'bad.csv'}", str(tmp_path / "o2"), model_dir=models["cnn"]))
