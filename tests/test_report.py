"""Reports a person looks at: the labeling report (`_report/`, `mgr report`) and a model's report.html.

Labels datasets here are real Parquet in the labels schema; the HTML is rendered by a real
headless Chromium (Debian's ``chromium``) to a screenshot that must not be blank.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from mgr.cli import main as cli_main
from mgr.datasets import labelset
from mgr.io.parts import write_part
from mgr.pipelines.report import labels_aggregate, write_labels_report
from mgr.reporting.html import image_names
from mgr.reporting.labels_report import CONF_BINS, block_aggregate, error_class, merge_aggregates

GENRES = ["ambient", "rock", "techno"]
ERRORS = ["not decodable audio (Format not recognised)", "empty file (0 bytes)", "not decodable audio (bad header)",
          "storage: cannot read file: timed out"]
CHROMIUM = "/usr/bin/chromium"


def _rows(n: int, *, seed: int = 0, min_confidence: float = 0.5, errors_every: int = 7):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        uri = f"/catalog/track{i:05d}.mp3"
        if errors_every and i % errors_every == 3:
            rows.append({"uri": uri, "track_id": f"track{i:05d}", "duration_s": None, "model_id": "m-1",
                         "error": ERRORS[i % len(ERRORS)]})
            continue
        p = rng.dirichlet(np.full(len(GENRES), 0.7)).astype(np.float32)
        order = np.argsort(-p)
        rows.append({"uri": uri, "track_id": f"track{i:05d}",
                     "genre": GENRES[order[0]] if p[order[0]] >= min_confidence else labelset.UNKNOWN,
                     "confidence": float(p[order[0]]), "top_genres": [GENRES[j] for j in order],
                     "top_probs": [float(p[j]) for j in order], "probs": p.tolist(), "segments": [],
                     "duration_s": float(rng.uniform(20, 400)), "decoded_s": 30.0, "model_id": "m-1"})
    return rows


def _labels_output(path, rows, *, per_part: int = 40, marker: bool = True) -> str:
    schema = labelset.labels_schema(GENRES, model_id="m-1")
    for i in range(0, len(rows), per_part):
        write_part(labelset.to_table(rows[i:i + per_part], schema), str(path))
    if marker:
        (path / labelset.MARKER_NAME).write_text(json.dumps({
            "model_id": "m-1", "finished": "2026-12-03T10:00:00+0000", "min_confidence": 0.5,
            "run": {"files": len(rows), "seconds": 12.5, "files_per_s": len(rows) / 12.5,
                    "audio_minutes_per_s": 3.2}}))
    return str(path)


def _hand_aggregate(rows):
    ok = [r for r in rows if r.get("error") is None]
    genres = {}
    for r in ok:
        g = genres.setdefault(r["genre"], {"tracks": 0, "seconds": 0.0})
        g["tracks"] += 1
        g["seconds"] += r["duration_s"]
    return ok, genres


def test_error_classes_drop_file_details():
    assert error_class("not decodable audio (Format not recognised)") == "not decodable audio"
    assert error_class("empty file (0 bytes)") == "empty file"
    assert error_class("storage: cannot read file: timed out") == "storage: cannot read file"
    assert error_class("unexpected ValueError: x") == "unexpected ValueError"
    assert error_class("") == "error"


def test_block_aggregates_match_a_hand_count_and_do_not_depend_on_the_blocks(tmp_path):
    rows = _rows(150, seed=1)
    table = labelset.to_table(rows, labelset.labels_schema(GENRES, model_id="m-1"))
    whole = block_aggregate(table, top_n=10)
    ok, genres = _hand_aggregate(rows)
    assert whole["rows"] == 150 and whole["ok"] == len(ok) and whole["errors"] == 150 - len(ok)
    assert whole["genres"].keys() == genres.keys()
    for g, v in genres.items():
        assert whole["genres"][g]["tracks"] == v["tracks"]
        assert whole["genres"][g]["seconds"] == pytest.approx(v["seconds"])
    assert whole["unknown"] == genres.get("unknown", {"tracks": 0})["tracks"] > 0
    assert sum(sum(c) for c in whole["confidence"].values()) == len(ok)
    assert all(len(c) == CONF_BINS for c in whole["confidence"].values())
    assert sorted(whole["error_classes"]) == ["empty file", "not decodable audio", "storage: cannot read file"]
    assert sum(v["count"] for v in whole["error_classes"].values()) == whole["errors"]
    lowest = sorted(ok, key=lambda r: r["confidence"])[:10]
    assert [r[1] for r in whole["lowest"]] == [r["uri"] for r in lowest]
    # blocks of 13 rows merged: the same aggregate
    merged = block_aggregate(table.slice(0, 0), top_n=10)
    for i in range(0, 150, 13):
        merged = merge_aggregates(merged, block_aggregate(table.slice(i, 13), top_n=10), top_n=10)
    assert merged["lowest"] == whole["lowest"]
    for key in ("rows", "ok", "errors", "unknown", "confidence"):
        assert merged[key] == whole[key], key
    assert merged["seconds"] == pytest.approx(whole["seconds"])


def _check_report_folder(folder, *, n_review):
    index = os.path.join(folder, "index.html")
    doc = open(index, encoding="utf-8").read()
    images = image_names(doc)
    assert images and all(os.path.isfile(os.path.join(folder, name)) for name in images), images
    for name in images:
        with open(os.path.join(folder, name), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert 'href="review.csv"' in doc and "http://" not in doc and "https://" not in doc
    with open(os.path.join(folder, "review.csv"), newline="") as fh:
        review = list(csv.DictReader(fh))
    assert len(review) == n_review
    conf = [float(r["confidence"]) for r in review]
    assert conf == sorted(conf)
    return doc, review


def test_report_of_a_small_labels_output_references_only_files_that_exist(tmp_path):
    rows = _rows(60, seed=2)
    out = _labels_output(tmp_path / "labels", rows)
    res = write_labels_report(out, top_n=25, use_ray=False)
    folder = tmp_path / "labels" / "_report"
    assert res["dir"] == str(folder) and res["tracks"] == 60
    doc, review = _check_report_folder(str(folder), n_review=25)
    for piece in ("genres by track count", "Errors", "not decodable audio", "files/s", "share unknown"):
        assert piece in doc, piece
    ok = sorted((r for r in rows if r.get("error") is None), key=lambda r: r["confidence"])
    assert [r["uri"] for r in review] == [r["uri"] for r in ok[:25]]
    # the report folder is invisible to readers of the dataset
    assert pq.read_table(out).num_rows == 60


@pytest.mark.timeout(300)
def test_report_on_ray_data_equals_the_in_process_one(ray_local, tmp_path):
    rows = _rows(230, seed=3)
    out = _labels_output(tmp_path / "labels", rows, per_part=30)
    here = labels_aggregate(out, top_n=20, use_ray=False)
    on_ray = labels_aggregate(out, top_n=20, use_ray=True)
    assert on_ray["lowest"] == here["lowest"]
    for key in ("rows", "ok", "errors", "unknown", "confidence", "genres", "error_classes"):
        if key == "genres":
            assert {g: v["tracks"] for g, v in on_ray[key].items()} == {g: v["tracks"] for g, v in here[key].items()}
        elif key == "error_classes":
            assert {c: v["count"] for c, v in on_ray[key].items()} == {c: v["count"] for c, v in here[key].items()}
        else:
            assert on_ray[key] == here[key], key


def test_mgr_report_writes_anywhere_and_explains_a_folder_without_labels(tmp_path, capsys):
    out = _labels_output(tmp_path / "labels", _rows(12, seed=4, errors_every=0), marker=False)
    assert cli_main(["report", out, "--out", str(tmp_path / "elsewhere")]) == 0
    doc, _ = _check_report_folder(str(tmp_path / "elsewhere"), n_review=12)
    assert "has not finished" in doc and "No file failed" in doc
    assert "elsewhere/index.html" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", str(tmp_path / "empty")]) == 2
    assert "no labels" in capsys.readouterr().err


def _screenshot(page: str, png: str, tmp_path) -> None:
    """Render ``page`` with headless Chromium to ``png`` (skips, or fails on CI, without one)."""
    browser = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if browser is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but no Chromium at /usr/bin/chromium: .ci/run installs it with apt")
        pytest.skip("no Chromium here (apt-get install -y chromium); .ci/run installs it on CI")
    profile = tmp_path / "chromium-profile"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1200,1600", "file://" + page]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert os.path.isfile(png), f"chromium wrote no screenshot (rc {res.returncode}): {res.stderr[-2000:]}"


def _distinct_colours(png: str) -> int:
    import matplotlib.image as mpimg

    pixels = (mpimg.imread(png)[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    return len(np.unique(pixels, axis=0))


@pytest.mark.timeout(180)
def test_the_labeling_report_renders_in_a_real_browser(tmp_path):
    out = _labels_output(tmp_path / "labels", _rows(40, seed=5))
    res = write_labels_report(out, use_ray=False)
    shot = str(tmp_path / "shot.png")
    _screenshot(res["index"], shot, tmp_path)
    # a blank page is one colour; the report has a header band, text and charts
    assert _distinct_colours(shot) > 50


def _model_dir_with_reports(path, *, val_loss: bool = True) -> str:
    """A model directory's text files (model.json, report.json with calibration, metrics.jsonl)."""
    from mgr.inference.calibration import calibration_sums, coverage_table, expected_calibration_error, reliability

    path.mkdir()
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 1.5, size=(300, len(GENRES)))
    p = np.exp(3 * logits) / np.exp(3 * logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(len(GENRES), p=np.exp(z) / np.exp(z).sum()) for z in logits])
    sums = calibration_sums(p, y, temperatures=(1.0, 3.0))
    calibration = {"temperature": 3.0, "ece_before": expected_calibration_error(sums.hist[1.0]),
                   "ece_after": expected_calibration_error(sums.hist[3.0]), "coverage": coverage_table(sums.hist[3.0]),
                   "reliability_before": reliability(sums.hist[1.0]), "reliability_after": reliability(sums.hist[3.0])}
    conf = np.zeros((3, 3), dtype=int)
    np.add.at(conf, (y, p.argmax(1)), 1)
    per_genre = {g: {"precision": 0.5 + 0.1 * i, "recall": 0.6, "f1": 0.55 + 0.1 * i, "support": int(conf[i].sum())}
                 for i, g in enumerate(GENRES)}
    (path / "model.json").write_text(json.dumps({"name": "cnn-test", "architecture": "cnn", "genres": GENRES,
                                                 "window_frames": 108, "temperature": 3.0,
                                                 "metrics": {"best_epoch": 3, "best_val_accuracy": 0.7}}))
    (path / "report.json").write_text(json.dumps({"split": "test", "accuracy": float((p.argmax(1) == y).mean()),
                                                  "genres": GENRES, "confusion": conf.tolist(),
                                                  "per_genre": per_genre, "calibration": calibration,
                                                  "model_id": "cnn-test-abc-t3"}))
    hist = [{"epoch": e, "loss": 1.2 / e, "accuracy": 0.4 + 0.1 * e, "val_accuracy": 0.35 + 0.1 * e,
             **({"val_loss": 1.3 / e + 0.1} if val_loss else {})} for e in range(1, 5)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hist))
    return str(path)


@pytest.mark.timeout(180)
def test_a_model_directory_gets_a_report_html_that_renders(tmp_path):
    from mgr.reporting.model_report import write_model_report

    model = _model_dir_with_reports(tmp_path / "model")
    res = write_model_report(model)
    doc = open(os.path.join(model, "report.html"), encoding="utf-8").read()
    images = image_names(doc)
    assert {"learning_curves.png", "confusion_matrix.png", "per_genre_f1.png", "calibration.png"} <= set(images)
    assert all(os.path.isfile(os.path.join(model, name)) for name in images)
    assert set(images) <= set(res["files"])
    for piece in ("Calibration", "--min-confidence", "F1", "Learning curves"):
        assert piece in doc, piece
    assert "has no val_loss" not in doc
    shot = str(tmp_path / "model.png")
    _screenshot(res["report"], shot, tmp_path)
    assert _distinct_colours(shot) > 50


def test_a_model_report_says_when_metrics_lack_the_validation_loss(tmp_path):
    from mgr.reporting.model_report import write_model_report

    model = _model_dir_with_reports(tmp_path / "model", val_loss=False)
    write_model_report(model)
    assert "has no val_loss" in open(os.path.join(model, "report.html"), encoding="utf-8").read()


@pytest.mark.timeout(600)
def test_every_finished_mgr_label_run_writes_its_report(ray_local, tmp_path, capsys):
    import torch

    from mgr.audio.features import pad_value
    from mgr.config import PRESETS
    from mgr.models import build_model
    from mgr.models.modeldir import save_model_dir
    from tests.audiogen import music_like, write_audio

    cfg = PRESETS["paper"]
    torch.manual_seed(0)
    model = tmp_path / "model"
    save_model_dir(str(model), model=build_model("cnn", n_classes=3, n_mels=cfg.n_mels), spec={
        "name": "report-cnn", "architecture": "cnn", "model_config": {"n_classes": 3, "n_mels": cfg.n_mels},
        "feature_config": cfg.to_dict(), "genres": GENRES, "window_frames": cfg.clip_frames,
        "pad_value": pad_value(cfg), "normalization": None, "metrics": {}, "provenance": {"test": True}})
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    for i, style in enumerate(("drone", "techno", "chime")):
        write_audio(str(catalog / f"{style}.wav"), music_like(style, 6.0, seed=i))
    (catalog / "broken.mp3").write_text("not audio\n" * 10)
    out = tmp_path / "labels"
    assert cli_main(["label", str(catalog), str(out), "--model", str(model), "--min-confidence", "0.9"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / '_report' / 'index.html'}" in printed
    doc, review = _check_report_folder(str(out / "_report"), n_review=3)
    assert "not decodable audio" in doc or "Errors" in doc
    assert {r["genre"] for r in review} == {"unknown"}  # an untrained 3-genre model is never 90 % sure
    assert pq.read_table(str(out)).num_rows == 4
    # the run's report comes from the aggregate of its exactly-once pass (OUTPUT is not read
    # again): the same as the report's own pass over OUTPUT gives
    again = write_labels_report(out, out=str(tmp_path / "again"), use_ray=False)
    assert (again["tracks"], again["errors"], again["unknown"]) == (4, 1, 3)
    assert (tmp_path / "again" / "review.csv").read_text() == (out / "_report" / "review.csv").read_text()


def test_an_aggregate_stays_small_however_many_kinds_of_error():
    from mgr.reporting.labels_report import MAX_CLASSES

    rows = [{"uri": f"/c/{i}.mp3", "track_id": str(i), "model_id": "m-1", "error": f"unexpected Error{chr(65 + i % 26)}"
             f"{chr(65 + i // 26)}: details"} for i in range(200)]
    table = labelset.to_table(rows, labelset.labels_schema(GENRES, model_id="m-1"))
    agg = block_aggregate(table.slice(0, 100))
    agg = merge_aggregates(agg, block_aggregate(table.slice(100)))
    assert len(agg["error_classes"]) == MAX_CLASSES and "other" in agg["error_classes"]
    assert sum(v["count"] for v in agg["error_classes"].values()) == 200
    assert len(json.dumps(agg)) < 20_000


def test_the_report_of_labels_on_s3_is_written_beside_them(s3_bucket, s3_endpoint):
    from mgr.io.location import Location

    fs, bucket = s3_bucket
    labels = Location(f"s3://{bucket}/labels", endpoint_url=s3_endpoint)
    rows = _rows(30, seed=6)
    schema = labelset.labels_schema(GENRES, model_id="m-1")
    for i in range(0, 30, 10):
        write_part(labelset.to_table(rows[i:i + 10], schema), labels)
    res = write_labels_report(labels, top_n=5, use_ray=False)
    assert res["index"] == f"s3://{bucket}/labels/_report/index.html"
    doc = fs.cat(f"{bucket}/labels/_report/index.html").decode()
    names = image_names(doc)
    assert names and all(fs.exists(f"{bucket}/labels/_report/{n}") for n in names)
    review = fs.cat(f"{bucket}/labels/_report/review.csv").decode().splitlines()
    assert len(review) == 1 + 5
