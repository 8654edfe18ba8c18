"""Training arrays in pure NumPy: per-band normalisation statistics and window crops.

Kept apart from :mod:`mgr.training.engine` (torch) so that the ingest tasks of a training
run (Ray Data map tasks on every core) import NumPy only: a worker process that starts for
a read or crop task costs a fraction of a second instead of a torch import.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np

from mgr.errors import ConfigError

__all__ = ["band_stats", "band_stats_from_sums", "crop_batch", "iter_batches"]


def band_stats(mels: Iterable[np.ndarray], *, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std over every frame of ``mels`` (each ``[n_mels, T]``).

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``[n_mels]`` float64 mean and std (std floored at 1e-3).
    """
    total = np.zeros(n_mels)
    sq = np.zeros(n_mels)
    count = 0
    for m in mels:
        m64 = np.asarray(m, dtype=np.float64)
        total += m64.sum(axis=1)
        sq += np.square(m64).sum(axis=1)
        count += m64.shape[1]
    return band_stats_from_sums(total, sq, count)


def band_stats_from_sums(total: np.ndarray, sq: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std from summed frames ``total``, summed squares ``sq`` (``[n_mels]``)
    and the frame ``count`` (partial sums of blocks add up to these).

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``[n_mels]`` float64 mean and std (std floored at 1e-3).
    """
    if count == 0:
        raise ConfigError("no training frames to compute normalisation statistics from")
    mean = np.asarray(total, np.float64) / count
    std = np.sqrt(np.maximum(np.asarray(sq, np.float64) / count - mean**2, 0.0))
    return mean, np.maximum(std, 1e-3)


def crop_batch(mels: Sequence[np.ndarray], *, width: int, pad: float,
               rng: np.random.Generator | None = None, dtype=np.float32) -> np.ndarray:
    """Cut one window of ``width`` frames from each ``[n_mels, T]`` array.

    A random start when ``rng`` is given (augmentation), the first frames otherwise; clips
    shorter than ``width`` are right-padded with ``pad``.

    Returns
    -------
    np.ndarray
        ``[len(mels), n_mels, width]`` of ``dtype`` (float32; float16 halves what travels
        from the ingest to the device, which computes in float32).
    """
    n_mels = mels[0].shape[0]
    out = np.full((len(mels), n_mels, width), pad, dtype=dtype)
    for i, m in enumerate(mels):
        t = m.shape[1]
        if t <= width:
            out[i, :, :t] = m
            continue
        start = int(rng.integers(0, t - width + 1)) if rng is not None else 0
        out[i] = m[:, start: start + width]
    return out


def iter_batches(mels: Sequence[np.ndarray], labels: np.ndarray, *, batch_size: int, width: int,
                 pad: float, rng: np.random.Generator | None, shuffle: bool = True,
                 random_crop: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """In-memory batches ``(x [B, n_mels, width] float32, y [B] int64)`` (the no-Ray feed).

    ``rng`` shuffles (``shuffle``) and places random crops (``random_crop``; else the first
    ``width`` frames of each clip are taken).
    """
    order = rng.permutation(len(mels)) if (shuffle and rng is not None) else np.arange(len(mels))
    for lo in range(0, len(order), batch_size):
        idx = order[lo: lo + batch_size]
        x = crop_batch([mels[i] for i in idx], width=width, pad=pad, rng=rng if random_crop else None)
        yield x, labels[idx].astype(np.int64)
