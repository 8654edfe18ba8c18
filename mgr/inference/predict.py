"""Batched prediction and per-track aggregation (pure torch/numpy, no Ray).

The one inference path of mgr, used by evaluation, the labeling predictor, the demo and
the figures. The DESIGN.md rule: W = the model's input length in frames, H = W // 2 unless
a hop in seconds says otherwise; windows start at 0, H, 2H, ... (:mod:`mgr.inference.windows`)
and a track's distribution is the mean of its windows' distributions. Inside a crnn window
the per-step distributions are already averaged by the model (time-weighted or plain mean,
``model.average``); :func:`window_distributions` can also return those steps.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np

from mgr.errors import ConfigError
from mgr.inference.windows import cut_windows, window_starts

__all__ = ["window_geometry", "window_distributions", "track_distributions", "predict_tracks", "autocast"]


def window_geometry(*, window_frames: int, frames_per_second: float, window_seconds: float | None = None,
                    hop_seconds: float | None = None) -> tuple[int, int]:
    """Window length W and hop H in frames.

    Parameters
    ----------
    window_frames : int
        The model's input length in frames (model.json ``window_frames``).
    frames_per_second : float
        ``sr / hop_length`` of the feature config.
    window_seconds, hop_seconds : float, optional
        Overrides: W = ``floor(window_seconds * fps) + 1``; H = ``round(hop_seconds * fps)``.

    Returns
    -------
    (int, int)
        W and H, at least one frame each; H = W // 2 by default.

    Raises
    ------
    ConfigError
        A non-positive length or hop.
    """
    for name, value in (("--window-seconds", window_seconds), ("--hop-seconds", hop_seconds)):
        if value is not None and not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    width = int(window_frames)
    if window_seconds is not None:
        width = int(np.floor(window_seconds * frames_per_second)) + 1
    if width < 1:
        raise ConfigError(f"window length must be at least one frame, got {width}")
    hop = max(1, width // 2)
    if hop_seconds is not None:
        hop = max(1, int(round(hop_seconds * frames_per_second)))
    return width, hop


def autocast(device):
    """Mixed-precision context on CUDA (bfloat16 when supported, else float16); no-op on CPU."""
    import torch

    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def window_distributions(model, windows: np.ndarray, *, mean: np.ndarray | None = None,
                         std: np.ndarray | None = None, batch_size: int = 64, device=None,
                         per_step: bool = False, amp: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Distributions of raw log-mel windows through a model.

    Parameters
    ----------
    model : torch.nn.Module
        Log-probabilities out (``[B, C]``); a crnn also has ``step_probs``.
    windows : np.ndarray
        ``[n_windows, n_mels, W]`` raw (un-normalised) log-mel windows.
    mean, std : np.ndarray, optional
        ``[n_mels]`` per-band normalisation (none for imported models).
    batch_size : int
        Windows per forward pass.
    device : torch.device or str, optional
        Default: the model's.
    per_step : bool
        Also return the crnn per-step distributions.
    amp : bool
        Mixed precision on CUDA.

    Returns
    -------
    probs : np.ndarray
        ``[n_windows, n_classes]`` float32.
    steps : np.ndarray or None
        ``[n_windows, n_steps, n_classes]`` float32 when ``per_step``.
    """
    import torch

    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    norm = None
    if mean is not None:
        norm = (torch.as_tensor(np.asarray(mean, np.float32), device=device)[None, :, None],
                torch.as_tensor(np.asarray(std, np.float32), device=device)[None, :, None])
    out, steps = [], []
    ctx = autocast(device) if amp else contextlib.nullcontext()
    try:
        with torch.inference_mode(), ctx:
            for lo in range(0, len(windows), batch_size):
                x = torch.as_tensor(np.ascontiguousarray(windows[lo: lo + batch_size], dtype=np.float32))
                x = x.to(device, non_blocking=True)
                if norm is not None:
                    x = (x - norm[0]) / norm[1]
                out.append(model(x).float().exp().cpu().numpy())
                if per_step:
                    steps.append(model.step_probs(x).float().cpu().numpy())
    finally:
        model.train(was_training)
    n_classes = out[0].shape[1] if out else 0
    probs = np.concatenate(out) if out else np.zeros((0, n_classes), np.float32)
    return probs, (np.concatenate(steps) if per_step and steps else None)


def track_distributions(window_probs: np.ndarray, owner: np.ndarray, *, n_tracks: int) -> np.ndarray:
    """Per-track mean of window distributions.

    Parameters
    ----------
    window_probs : np.ndarray
        ``[n_windows, n_classes]``.
    owner : np.ndarray
        ``[n_windows]`` int track index of each window (every track owns at least one).

    Returns
    -------
    np.ndarray
        ``[n_tracks, n_classes]`` float64.
    """
    p = np.asarray(window_probs, dtype=np.float64)
    out = np.zeros((n_tracks, p.shape[1] if p.ndim == 2 else 0))
    np.add.at(out, owner, p)
    counts = np.bincount(owner, minlength=n_tracks)[:, None]
    return out / np.maximum(counts, 1)


def predict_tracks(model, mels: Sequence[np.ndarray], *, width: int, hop: int | None = None, pad: float,
                   mean=None, std=None, device=None, batch_size: int = 64) -> np.ndarray:
    """Track distributions by window voting (the mean of the windows' distributions).

    Parameters
    ----------
    mels : sequence of np.ndarray
        ``[n_mels, T]`` raw log-mel per track.
    width, hop : int
        Window length W and hop H (default ``W // 2``) in frames.
    pad : float
        Value of padded frames (tracks shorter than W).

    Returns
    -------
    np.ndarray
        ``[len(mels), n_classes]`` float64 probabilities.
    """
    hop = hop or max(width // 2, 1)
    windows, owners = [], []
    for i, m in enumerate(mels):
        m = np.asarray(m, np.float32)
        w = cut_windows(m, window_starts(m.shape[1], width=width, hop=hop), width=width, pad=pad)
        windows.append(w)
        owners.append(np.full(len(w), i))
    if not windows:
        return np.zeros((0, 0))
    probs, _ = window_distributions(model, np.concatenate(windows), mean=mean, std=std, batch_size=batch_size,
                                    device=device)
    return track_distributions(probs, np.concatenate(owners), n_tracks=len(mels))
