"""Log-mel spectrograms (pure numpy, no Ray).

The paper's features are ``ln(mel power)`` with exact zeros set to 1e-6; a track is a
``[n_mels, n_frames]`` array. Windows cut from it live in :mod:`mgr.inference.windows`.
"""

from __future__ import annotations

import numpy as np

from mgr.config import FeatureConfig
from mgr.audio.dsp import mel_filters, mel_frames
from mgr.errors import ConfigError

__all__ = ["log_mel", "pad_value"]


def log_mel(y: np.ndarray, *, cfg: FeatureConfig) -> np.ndarray:
    """Log-mel spectrogram of mono audio.

    Parameters
    ----------
    y : np.ndarray
        ``[n_samples]`` float32 audio at ``cfg.sr``.
    cfg : FeatureConfig
        Analysis settings (the ``paper`` preset by default).

    Returns
    -------
    np.ndarray
        ``[cfg.n_mels, n_frames]`` float32 with ``n_frames = 1 + n_samples // hop``;
        equal to ``log(librosa.feature.melspectrogram(...))`` with zeros set to the floor.
    """
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1:
        raise ConfigError(f"log_mel expects mono audio [n_samples], got shape {y.shape}")
    basis = mel_filters(sr=cfg.sr, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)
    mel = mel_frames(y, basis, n_fft=cfg.n_fft, hop_length=cfg.hop_length, power=cfg.power)
    mel[mel == 0] = cfg.floor
    return np.log(mel).astype(np.float32, copy=False)


def pad_value(cfg: FeatureConfig) -> float:
    """Value of padded frames: ``ln(floor)`` (silence, as the reference code padded)."""
    return float(np.log(np.float32(cfg.floor)))
