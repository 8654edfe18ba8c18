"""Building blocks shared by the models (pure torch, no Ray)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ConvBlock", "frames_out", "min_frames", "pad_frames", "time_weights"]


class ConvBlock(nn.Module):
    """Conv1d over time → (BatchNorm) → ReLU → MaxPool1d.

    Input ``[batch, in_channels, T]``, output ``[batch, out_channels, T']`` with
    ``T' = ((T - kernel) // stride + 1) // pool`` (Keras ``valid`` padding).
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel: int, stride: int = 1,
                 pool: int = 2, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=kernel, stride=stride)
        self.norm = nn.BatchNorm1d(out_channels) if batch_norm else nn.Identity()
        self.pool = nn.MaxPool1d(pool) if pool > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))


def frames_out(n_frames: int, layers: list[tuple[int, int, int]]) -> int:
    """Frames left after ``layers`` of ``(kernel, stride, pool)`` (valid padding)."""
    t = n_frames
    for kernel, stride, pool in layers:
        if t < kernel:
            return 0
        t = (t - kernel) // stride + 1
        t = t // pool
    return t


def min_frames(layers: list[tuple[int, int, int]]) -> int:
    """Smallest input length that leaves at least one frame after ``layers``."""
    t = 1
    while frames_out(t, layers) < 1:
        t += 1
    return t


def pad_frames(x: torch.Tensor, minimum: int) -> torch.Tensor:
    """Right-pad ``[batch, n_mels, T]`` with zeros (the normalised mean) to ``minimum`` frames."""
    if x.shape[-1] >= minimum:
        return x
    return F.pad(x, (0, minimum - x.shape[-1]), value=0.0)


def time_weights(n_steps: int, *, average: str, device=None, dtype=torch.float32) -> torch.Tensor:
    """Weights ``[n_steps]`` summing to 1: ``t / Σ t`` (``weighted``, t = 1..n) or ``1/n`` (``mean``)."""
    if average == "weighted":
        w = torch.arange(1, n_steps + 1, device=device, dtype=dtype)
    else:
        w = torch.ones(n_steps, device=device, dtype=dtype)
    return w / w.sum()


def resolve_config(kind: str, presets: dict, preset: str, n_classes: int, n_mels: int, options: dict) -> dict:
    """A model's configuration: its ``preset`` with ``options`` applied (the ``paper``
    preset is fixed, so published weights always fit it).

    Raises
    ------
    ConfigError
        Unknown preset or option, fewer than 2 classes or no mel band.
    """
    from mgr.errors import ConfigError

    if preset not in presets:
        raise ConfigError(f"unknown {kind} preset {preset!r}; choose one of {sorted(presets)}")
    if n_classes < 2 or n_mels < 1:
        raise ConfigError(f"{kind} needs n_classes >= 2 and n_mels >= 1, got {n_classes}, {n_mels}")
    cfg = dict(presets[preset])
    unknown = set(options) - set(cfg)
    if unknown:
        raise ConfigError(f"unknown {kind} options {sorted(unknown)}; known: {sorted(cfg)}")
    if preset != "paper":
        cfg.update(options)
    return cfg
