"""Temperature calibration (mgr.inference.calibration): pure numpy, no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from mgr.errors import ConfigError
from mgr.inference.calibration import (
    COVERAGE_THRESHOLDS,
    FINE_BINS,
    TEMPERATURES,
    CalibrationSums,
    apply_temperature,
    calibration_sums,
    coverage_table,
    expected_calibration_error,
    fit_temperature,
    reliability,
    threshold_for_accuracy,
)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(n: int, *, k: int = 5, sharpen: float = 3.0, seed: int = 0):
    """Tracks whose true class is drawn from softmax(z) while the model says softmax(sharpen·z).

    The honest distribution is the model's at T = sharpen, so a fit should land near it.
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.2, size=(n, k))
    honest = _softmax(z)
    y = np.array([rng.choice(k, p=p) for p in honest])
    return _softmax(sharpen * z), y


def test_apply_temperature_softens_and_sharpens_and_keeps_the_ranking():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert apply_temperature(p, 1.0) is p
    soft, sharp = apply_temperature(p, 2.0), apply_temperature(p, 0.5)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    np.testing.assert_allclose(sharp.sum(axis=1), 1.0)
    assert (soft.max(axis=1) < p.max(axis=1)).all() and (sharp.max(axis=1) > p.max(axis=1)).all()
    assert (soft.argmax(axis=1) == p.argmax(axis=1)).all()
    # softmax(log p / T) by hand
    np.testing.assert_allclose(soft[0], np.sqrt(p[0]) / np.sqrt(p[0]).sum())
    with pytest.raises(ConfigError):
        apply_temperature(p, 0.0)


def test_fitted_temperature_lowers_the_ece_of_an_overconfident_model_on_held_out_tracks():
    val_p, val_y = _overconfident(3000, seed=1)
    test_p, test_y = _overconfident(3000, seed=2)
    t = fit_temperature(calibration_sums(val_p, val_y))
    assert 2.0 < t < 4.5, t  # the model is 3x too sharp
    sums = calibration_sums(test_p, test_y, temperatures=(1.0, t))
    before = expected_calibration_error(sums.hist[1.0])
    after = expected_calibration_error(sums.hist[t])
    assert before > 0.1, before  # really over-confident
    assert after < before / 3, (before, after)
    # the test NLL is lower at the fitted T than uncalibrated
    i1, it = int(np.argmin(abs(TEMPERATURES - 1.0))), int(np.argmin(abs(TEMPERATURES - t)))
    assert sums.nll[it] < sums.nll[i1]
    # calibration changes confidence, never the predicted genre: accuracy is the same
    rel_before, rel_after = reliability(sums.hist[1.0]), reliability(sums.hist[t])
    n_correct = lambda rel: sum(r["accuracy"] * r["count"] for r in rel if r["count"])  # noqa: E731
    assert n_correct(rel_before) == pytest.approx(n_correct(rel_after))
    assert sum(r["count"] for r in rel_after) == 3000


def test_calibration_sums_add_up_across_workers_and_round_trip():
    p, y = _overconfident(400, seed=3)
    whole = calibration_sums(p, y, temperatures=(1.0, 2.0))
    parts = [calibration_sums(p[i:i + 100], y[i:i + 100], temperatures=(1.0, 2.0)) for i in range(0, 400, 100)]
    merged = CalibrationSums()
    for part in parts:
        merged = merged.merge(part)
    assert merged.n == whole.n == 400
    np.testing.assert_allclose(merged.nll, whole.nll)
    for t in (1.0, 2.0):
        np.testing.assert_allclose(merged.hist[t], whole.hist[t])
    back = CalibrationSums.from_dict(merged.to_dict())
    assert back.n == 400 and fit_temperature(back) == fit_temperature(whole)
    np.testing.assert_allclose(back.hist[2.0], whole.hist[2.0])
    assert fit_temperature(CalibrationSums()) == 1.0


def test_coverage_table_is_monotone_and_matches_a_hand_count():
    rng = np.random.default_rng(4)
    n, k = 500, 4
    p = rng.dirichlet(np.full(k, 0.6), size=n)
    y = rng.integers(0, k, size=n)
    table = coverage_table(calibration_sums(p, y).hist[1.0])
    assert [r["threshold"] for r in table] == list(COVERAGE_THRESHOLDS)
    cov = [r["coverage"] for r in table]
    assert cov[0] == 1.0 and all(a >= b for a, b in zip(cov, cov[1:]))
    conf, correct = p.max(axis=1), p.argmax(axis=1) == y
    for r in table:
        kept = conf >= r["threshold"]
        assert r["kept"] == int(kept.sum()), r
        assert r["coverage"] == pytest.approx(kept.mean())
        if kept.any():
            assert r["accuracy"] == pytest.approx(correct[kept].mean())
        else:
            assert r["accuracy"] is None


def test_a_confidence_exactly_on_a_threshold_is_kept_as_min_confidence_keeps_it():
    # labeling keeps a track when confidence >= --min-confidence: the table must agree
    k = 20
    conf = np.array([t for t in COVERAGE_THRESHOLDS if t >= 0.1])
    p = np.concatenate([conf[:, None], np.repeat(((1 - conf) / (k - 1))[:, None], k - 1, axis=1)], axis=1)
    y = np.zeros(len(conf), dtype=int)
    table = {r["threshold"]: r for r in coverage_table(calibration_sums(p, y).hist[1.0])}
    for i, t in enumerate(conf):
        assert table[float(t)]["kept"] == len(conf) - i, t


def test_threshold_for_accuracy_picks_the_lowest_threshold_that_reaches_the_target():
    # 10 tracks: confidence 0.05·i + 0.5 for i < 10, correct when i >= 4
    conf = np.array([0.5 + 0.05 * i for i in range(10)])
    p = np.stack([conf, 1 - conf], axis=1)
    y = np.array([1 if i < 4 else 0 for i in range(10)])
    table = coverage_table(calibration_sums(p, y).hist[1.0])
    assert threshold_for_accuracy(table, 0.6) == 0.0  # all 10 kept: 6/10
    assert threshold_for_accuracy(table, 1.0) == 0.7  # from 0.7 on: all correct
    assert threshold_for_accuracy(table, 0.99) == 0.7
    with pytest.raises(ConfigError):
        threshold_for_accuracy(table, 1.5)
    wrong = coverage_table(calibration_sums(p, np.ones(10, dtype=int)).hist[1.0])
    assert threshold_for_accuracy(wrong, 0.5) is None


def test_ece_and_reliability_by_hand():
    # two bins used: 4 tracks at 0.95 (3 correct), 2 tracks at 0.55 (1 correct)
    h = np.zeros((3, FINE_BINS))
    h[:, 95] = [4, 3, 4 * 0.95]
    h[:, 55] = [2, 1, 2 * 0.55]
    assert expected_calibration_error(h) == pytest.approx((abs(3 - 3.8) + abs(1 - 1.1)) / 6)
    rel = reliability(h)
    assert rel[9]["count"] == 4 and rel[9]["accuracy"] == 0.75 and rel[9]["confidence"] == pytest.approx(0.95)
    assert rel[0]["accuracy"] is None and rel[0]["count"] == 0


# --- mgr calibrate and --target-accuracy -------------------------------------------------

def _synthetic_model(path, *, n_genres: int = 4, n_mels: int = 32, frames: int = 96, sharpen: float = 1.0) -> str:
    import torch

    from mgr.audio.features import pad_value
    from mgr.config import FeatureConfig
    from mgr.models import build_model
    from mgr.models.modeldir import save_model_dir

    cfg = FeatureConfig(preset="synthetic", n_mels=n_mels, clip_frames=frames)
    torch.manual_seed(0)
    model = build_model("cnn", n_classes=n_genres, n_mels=n_mels)
    with torch.no_grad():  # bigger logits: a confident (and wrong-ish) untrained model
        for p in model.parameters():
            p.mul_(sharpen)
    save_model_dir(str(path), model=model, spec={
        "name": "calib-cnn", "architecture": "cnn", "model_config": {"n_classes": n_genres, "n_mels": n_mels},
        "feature_config": cfg.to_dict(), "genres": [f"genre{g}" for g in range(n_genres)], "window_frames": frames,
        "pad_value": pad_value(cfg), "normalization": None, "metrics": {}, "provenance": {"test": True}})
    return str(path)


def _reference_temperature(model_dir: str, features: str, split: str) -> float:
    """T fitted in process: decode the split's mels, window-vote, fit on the NLL grid."""
    import pyarrow.parquet as pq

    from mgr.inference.predict import predict_tracks
    from mgr.models.modeldir import load_model_dir

    loaded = load_model_dir(model_dir)
    rows = [r for r in pq.read_table(features).to_pylist() if r["split"] == split and r["error"] is None]
    mels = [np.frombuffer(r["mel"], np.float16).reshape(r["n_mels"], r["n_frames"]).astype(np.float32) for r in rows]
    y = np.array([loaded.genres.index(r["label"]) for r in rows])
    probs = predict_tracks(loaded.model, mels, width=loaded.window_frames, pad=loaded.pad_value, mean=loaded.mean,
                           std=loaded.std)
    return fit_temperature(calibration_sums(probs, y))


@pytest.mark.timeout(600)
def test_mgr_calibrate_writes_a_new_calibrated_model_and_never_touches_the_old(ray_local, tmp_path, capsys):
    import json
    import os

    from mgr.cli import main as cli_main
    from mgr.models.modeldir import load_model_dir
    from mgr.reporting.html import image_names
    from tests.featgen import write_features

    features = str(tmp_path / "features")
    write_features(features, n_genres=4, per_split={"train": 2, "val": 12, "test": 8})
    model = _synthetic_model(tmp_path / "model", sharpen=1.6)
    before = {f: open(os.path.join(model, f), "rb").read() for f in os.listdir(model)}
    out = str(tmp_path / "calibrated")
    assert cli_main(["calibrate", model, features, out, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    t = res["temperature"]
    assert t == pytest.approx(_reference_temperature(model, features, "val"))
    assert t != 1.0 and res["split"] == "test" and res["fitted_on"]["n"] == 48
    assert {f: open(os.path.join(model, f), "rb").read() for f in os.listdir(model)} == before
    spec = json.load(open(os.path.join(out, "model.json")))
    assert spec["temperature"] == t and spec["provenance"]["calibrated_from"] == load_model_dir(model).model_id
    loaded = load_model_dir(out)
    assert loaded.temperature == t and loaded.model_id != load_model_dir(model).model_id
    cal = json.load(open(os.path.join(out, "report.json")))["calibration"]
    assert cal["temperature"] == t and cal["n"] == 32
    assert cal["ece_after"] <= cal["ece_before"] + 0.05
    cov = [r["coverage"] for r in cal["coverage"]]
    assert cov[0] == 1.0 and all(a >= b for a, b in zip(cov, cov[1:]))
    doc = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert "calibration.png" in image_names(doc)
    assert all(os.path.isfile(os.path.join(out, name)) for name in image_names(doc))
    # a new directory only: never into MODEL itself, never over another one
    assert cli_main(["calibrate", model, features, model]) == 2
    assert "must differ from MODEL" in capsys.readouterr().err
    assert cli_main(["calibrate", model, features, out]) == 2
    assert "not empty" in capsys.readouterr().err


def test_target_accuracy_reads_the_threshold_from_the_models_table(tmp_path, capsys):
    import json

    from mgr.pipelines.calibrate import min_confidence_for

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text("{}")
    with pytest.raises(ConfigError, match="mgr calibrate"):
        min_confidence_for(str(model), 0.9)
    conf = np.array([0.5 + 0.05 * i for i in range(10)])
    p = np.stack([conf, 1 - conf], axis=1)
    y = np.array([1 if i < 4 else 0 for i in range(10)])
    table = coverage_table(calibration_sums(p, y).hist[1.0])
    (model / "report.json").write_text(json.dumps({"calibration": {"coverage": table, "split": "test"}}))
    assert min_confidence_for(str(model), 0.95) == 0.7
    assert "--min-confidence 0.7" in capsys.readouterr().err
    wrong = coverage_table(calibration_sums(p, np.ones(10, dtype=int)).hist[1.0])
    (model / "report.json").write_text(json.dumps({"calibration": {"coverage": wrong, "split": "test"}}))
    with pytest.raises(ConfigError, match="lower --target-accuracy"):
        min_confidence_for(str(model), 0.9)


def test_too_few_tracks_fit_no_temperature():
    """A handful of tracks, all right, would sharpen without limit: T stays 1 below MIN_FIT_TRACKS."""
    from mgr.inference.calibration import MIN_FIT_TRACKS

    y = np.arange(4) % 3
    p = np.full((4, 3), 0.2)
    p[np.arange(4), y] = 0.6
    sums = calibration_sums(p, y)
    assert sums.n < MIN_FIT_TRACKS and fit_temperature(sums) == 1.0
    assert fit_temperature(sums, min_tracks=1) < 1.0  # what an unguarded fit would store
