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
