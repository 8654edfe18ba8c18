"""Numpy signal processing equal to librosa's, without importing librosa in workers.

librosa compiles numba kernels when its submodules are first imported (seconds per worker
process, more on a loaded machine); extraction needs only a Hann-window STFT and Slaney mel
filters, written here in numpy. ``tests/test_features.py`` checks both against librosa.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["hz_to_mel", "mel_to_hz", "mel_filters", "mel_frames"]

_F_SP = 200.0 / 3  # Slaney: linear below 1 kHz
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(freqs: np.ndarray) -> np.ndarray:
    """Slaney mel scale (linear below 1 kHz, logarithmic above), as librosa's default."""
    freqs = np.asanyarray(freqs, dtype=np.float64)
    mels = freqs / _F_SP
    log_t = freqs >= _MIN_LOG_HZ
    return np.where(log_t, _MIN_LOG_MEL + np.log(np.maximum(freqs, 1e-12) / _MIN_LOG_HZ) / _LOGSTEP, mels)


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mels = np.asanyarray(mels, dtype=np.float64)
    freqs = _F_SP * mels
    return np.where(mels >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels - _MIN_LOG_MEL)), freqs)


@functools.lru_cache(maxsize=8)
def mel_filters(*, sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Slaney-normalised triangular mel filters.

    Returns
    -------
    np.ndarray
        ``[n_mels, 1 + n_fft // 2]`` float32, equal to ``librosa.filters.mel`` (defaults).
    """
    fmax = float(sr) / 2 if fmax is None else fmax
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2: n_mels + 2] - mel_f[:n_mels]))[:, None]
    out = weights.astype(np.float32)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    # periodic Hann, as scipy.signal.get_window("hann", n, fftbins=True) that librosa uses
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)


def mel_frames(y: np.ndarray, basis: np.ndarray, *, n_fft: int, hop_length: int, power: float = 2.0,
               block: int = 48) -> np.ndarray:
    """Mel power spectrogram ``[n_mels, 1 + n_samples // hop_length]`` float32, block by block.

    Equal to ``basis @ np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop_length,
    pad_mode="constant")) ** power`` (centred, zero-padded frames, periodic Hann window), but each block of frames is projected onto the
    mel ``basis`` ``[n_mels, 1 + n_fft // 2]`` as soon as it is transformed, so the full
    linear-frequency spectrogram (8x the mel one) never exists: an hour of audio needs
    ~40 MB for its mel spectrogram instead of ~320 MB more for the STFT.
    """
    import scipy.fft

    pad = n_fft // 2
    padded = np.zeros(len(y) + 2 * pad, dtype=np.float32)
    padded[pad: pad + len(y)] = y
    n_frames = 1 + len(y) // hop_length
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length][:n_frames]
    window = _hann(n_fft)
    out = np.empty((basis.shape[0], n_frames), dtype=np.float32)
    power_block = np.empty((min(block, n_frames), 1 + n_fft // 2), dtype=np.float32)
    for s in range(0, n_frames, block):
        spec = scipy.fft.rfft(window * frames[s: s + block], axis=-1, workers=1)
        pb = power_block[: spec.shape[0]]
        if power == 2.0:
            np.add(spec.real * spec.real, spec.imag * spec.imag, out=pb, casting="same_kind")
        else:
            pb[...] = np.abs(spec) ** power
        np.matmul(basis, pb.T, out=out[:, s: s + spec.shape[0]])
    return out
