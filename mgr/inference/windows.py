"""Time windows cut from a log-mel spectrogram (pure numpy, no Ray).

Windows (for labeling and evaluation) are W frames long, start at 0, H, 2H, ...; the last
is the last that fits; a track shorter than W is one window padded with the log of the
floor (:func:`mgr.audio.features.pad_value`), as the reference code padded.
"""

from __future__ import annotations

import numpy as np

from mgr.errors import ConfigError

__all__ = ["fit_frames", "window_starts", "cut_windows", "spread_starts"]


def fit_frames(mel: np.ndarray, n_frames: int, *, pad: float) -> np.ndarray:
    """Crop or pad ``[n_mels, T]`` to exactly ``[n_mels, n_frames]`` (first frames kept)."""
    t = mel.shape[-1]
    if t >= n_frames:
        return mel[..., :n_frames]
    out = np.full(mel.shape[:-1] + (n_frames,), pad, dtype=mel.dtype)
    out[..., :t] = mel
    return out


def window_starts(n_frames: int, *, width: int, hop: int) -> np.ndarray:
    """Start frames of the windows of a track.

    Parameters
    ----------
    n_frames : int
        Frames of the track.
    width, hop : int
        Window length W and hop H in frames.

    Returns
    -------
    np.ndarray
        ``[n_windows]`` int64 starts ``0, H, 2H, ...`` of every window that fits entirely;
        ``[0]`` for a track shorter than W.
    """
    if width <= 0 or hop <= 0:
        raise ConfigError(f"window width and hop must be positive, got {width} and {hop}")
    if n_frames <= width:
        return np.zeros(1, dtype=np.int64)
    return np.arange(0, n_frames - width + 1, hop, dtype=np.int64)


def spread_starts(starts: np.ndarray, max_windows: int | None) -> np.ndarray:
    """Keep at most ``max_windows`` of ``starts``, spread evenly (first and last kept)."""
    if max_windows is None or len(starts) <= max_windows:
        return starts
    if max_windows == 1:
        return starts[len(starts) // 2: len(starts) // 2 + 1]
    idx = np.unique(np.round(np.linspace(0, len(starts) - 1, max_windows)).astype(np.int64))
    return starts[idx]


def cut_windows(mel: np.ndarray, starts: np.ndarray, *, width: int, pad: float) -> np.ndarray:
    """Cut ``[n_mels, T]`` into ``[len(starts), n_mels, width]`` windows (padded if short)."""
    if mel.shape[-1] < width:
        return fit_frames(mel, width, pad=pad)[None]
    return np.stack([mel[:, s: s + width] for s in starts])
