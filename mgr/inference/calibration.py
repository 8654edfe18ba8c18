"""Temperature calibration of track distributions, from sums that combine across workers.

A track's distribution p (after window averaging and the crnn's step averaging) is
calibrated as ``p_T = softmax(log p / T)``; T > 1 softens an over-confident model. T is
fitted on the val split by minimising the negative log-likelihood over a fixed grid of
temperatures: every worker adds up the NLL of its tracks at every grid point
(:func:`calibration_sums`), the sums are added (:meth:`CalibrationSums.merge`), and
:func:`fit_temperature` picks the minimum. The same sums hold confidence histograms, from
which the expected calibration error, the reliability diagram and the accuracy-vs-coverage
table come, so nothing per track ever needs to reach the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from mgr.errors import ConfigError

__all__ = [
    "TEMPERATURES",
    "FINE_BINS",
    "MIN_FIT_TRACKS",
    "ECE_BINS",
    "COVERAGE_THRESHOLDS",
    "apply_temperature",
    "CalibrationSums",
    "calibration_sums",
    "fit_temperature",
    "expected_calibration_error",
    "reliability",
    "coverage_table",
    "threshold_for_accuracy",
]

#: candidate temperatures, log-spaced 0.05 … 20 (1.0 included), ~5 % apart
TEMPERATURES = np.unique(np.concatenate([np.geomspace(0.05, 20.0, 124), [1.0]]))
#: confidence histogram resolution (equal-width bins on [0, 1])
FINE_BINS = 100
#: bins of the expected calibration error and of the reliability diagram
ECE_BINS = 10
#: confidence thresholds of the accuracy-vs-coverage table
COVERAGE_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.0, 1.0, 0.05))

_EPS = 1e-12


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row-wise.

    Parameters
    ----------
    probs : np.ndarray
        ``[..., n_classes]`` probabilities (rows summing to 1).
    temperature : float
        T > 0; 1 returns ``probs`` unchanged.

    Returns
    -------
    np.ndarray
        Same shape, float64 (float32 in stays float32).
    """
    if not (temperature > 0 and np.isfinite(temperature)):
        raise ConfigError(f"temperature must be a positive number, got {temperature}")
    p = np.asarray(probs)
    if temperature == 1.0:
        return p
    z = np.log(np.clip(p.astype(np.float64), _EPS, None)) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out = e / e.sum(axis=-1, keepdims=True)
    return out.astype(p.dtype if p.dtype in (np.float32, np.float64) else np.float64)


@dataclass
class CalibrationSums:
    """Additive calibration statistics of a set of labelled tracks.

    Attributes
    ----------
    n : int
        Tracks counted.
    nll : np.ndarray
        ``[len(TEMPERATURES)]`` summed negative log-likelihood at every grid temperature.
    hist : dict
        ``{T: [3, FINE_BINS] array}`` per applied temperature: rows are the track count,
        the number correct and the summed confidence of the tracks whose top probability
        falls in each confidence bin.
    """

    n: int = 0
    nll: np.ndarray = field(default_factory=lambda: np.zeros(len(TEMPERATURES)))
    hist: dict = field(default_factory=dict)

    def merge(self, other: "CalibrationSums") -> "CalibrationSums":
        """The sums of both sets (neither is changed)."""
        hist = {t: h.copy() for t, h in self.hist.items()}
        for t, h in other.hist.items():
            hist[t] = hist[t] + h if t in hist else h.copy()
        return CalibrationSums(n=self.n + other.n, nll=self.nll + other.nll, hist=hist)

    def to_dict(self) -> dict:
        return {"n": int(self.n), "nll": self.nll.tolist(),
                "hist": {repr(float(t)): h.tolist() for t, h in self.hist.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "CalibrationSums":
        return cls(n=int(d["n"]), nll=np.asarray(d["nll"], dtype=np.float64),
                   hist={float(t): np.asarray(h, dtype=np.float64) for t, h in d["hist"].items()})


def _histogram(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    idx = np.minimum((conf * FINE_BINS).astype(np.int64), FINE_BINS - 1)
    h = np.zeros((3, FINE_BINS))
    np.add.at(h[0], idx, 1.0)
    np.add.at(h[1], idx, correct.astype(np.float64))
    np.add.at(h[2], idx, conf)
    return h


def calibration_sums(probs: np.ndarray, y: np.ndarray, *, temperatures: Sequence[float] = (1.0,)) -> CalibrationSums:
    """Calibration statistics of uncalibrated track distributions and their true classes.

    Parameters
    ----------
    probs : np.ndarray
        ``[n_tracks, n_classes]`` track distributions at T = 1.
    y : np.ndarray
        ``[n_tracks]`` int true class indices.
    temperatures : sequence of float
        Temperatures at which to keep confidence histograms (1.0: before calibration).

    Returns
    -------
    CalibrationSums
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if p.ndim != 2 or len(p) != len(y):
        raise ConfigError(f"calibration needs probs [n, C] and labels [n], got {p.shape} and {y.shape}")
    if len(p) == 0:
        return CalibrationSums()
    logp = np.log(np.clip(p, _EPS, None))
    nll = np.empty(len(TEMPERATURES))
    for i, t in enumerate(TEMPERATURES):
        z = logp / t
        zmax = z.max(axis=1, keepdims=True)
        lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))
        nll[i] = float((lse - z[np.arange(len(y)), y]).sum())
    hist = {float(t): _histogram(apply_temperature(p, float(t)), y) for t in temperatures}
    return CalibrationSums(n=len(p), nll=nll, hist=hist)


#: fewer labelled tracks than this fit no temperature (T stays 1): a handful of tracks, all
#: correct, would drive T to the sharpest end of the grid
MIN_FIT_TRACKS = 20


def fit_temperature(sums: CalibrationSums, *, min_tracks: int = MIN_FIT_TRACKS) -> float:
    """The grid temperature of least NLL; 1.0 when fewer than ``min_tracks`` tracks were summed."""
    if sums.n < max(min_tracks, 1):
        return 1.0
    return float(TEMPERATURES[int(np.argmin(sums.nll))])


def _coarse(h: np.ndarray, bins: int) -> np.ndarray:
    return h.reshape(3, bins, FINE_BINS // bins).sum(axis=2)


def expected_calibration_error(hist: np.ndarray, *, bins: int = ECE_BINS) -> float:
    """ECE: the track-weighted mean |accuracy − confidence| over equal-width confidence bins."""
    c = _coarse(np.asarray(hist), bins)
    total = c[0].sum()
    if total == 0:
        return 0.0
    nz = c[0] > 0
    return float(np.abs(c[1][nz] - c[2][nz]).sum() / total)


def reliability(hist: np.ndarray, *, bins: int = ECE_BINS) -> list[dict]:
    """Per-bin ``lo``, ``hi``, ``count``, mean ``confidence`` and ``accuracy`` (None when empty)."""
    c = _coarse(np.asarray(hist), bins)
    out = []
    for b in range(bins):
        n = float(c[0][b])
        out.append({"lo": b / bins, "hi": (b + 1) / bins, "count": int(n),
                    "confidence": float(c[2][b] / n) if n else None,
                    "accuracy": float(c[1][b] / n) if n else None})
    return out


def coverage_table(hist: np.ndarray, *, thresholds: Sequence[float] = COVERAGE_THRESHOLDS) -> list[dict]:
    """Accuracy of the tracks kept when only those with confidence ≥ each threshold are kept.

    Returns
    -------
    list of dict
        ``threshold``, ``kept`` (tracks), ``coverage`` (kept / all) and ``accuracy`` (of
        the kept; None when none is kept), thresholds ascending (coverage non-increasing).
    """
    h = np.asarray(hist)
    total = h[0].sum()
    rows = []
    for t in thresholds:
        lo = min(int(round(t * FINE_BINS)), FINE_BINS)
        kept = h[0][lo:].sum()
        correct = h[1][lo:].sum()
        rows.append({"threshold": float(t), "kept": int(kept), "coverage": float(kept / total) if total else 0.0,
                     "accuracy": float(correct / kept) if kept else None})
    return rows


def threshold_for_accuracy(table: Sequence[dict], target: float) -> float | None:
    """The lowest threshold of ``table`` whose kept tracks reach ``target`` accuracy (None: none does)."""
    if not 0 < target <= 1:
        raise ConfigError(f"--target-accuracy must be in (0, 1], got {target}")
    for row in table:
        if row["accuracy"] is not None and row["accuracy"] >= target:
            return float(row["threshold"])
    return None
