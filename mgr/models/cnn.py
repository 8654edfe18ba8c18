"""Model 2 of the paper: 1D convolutions over time, global average ∥ max pooling, dense.

The ``paper`` preset is exactly the published Keras model (so its weights load into it):
``Conv1D(256, 4, strides=2) → ReLU → MaxPool(2)`` three times, ``[GAP, GMP]`` concatenated
(512), ``Dropout(0.5)``, ``Dense(n_classes)``, softmax. The ``mgr`` preset adds batch
normalisation, stride-1 convolutions and a hidden dense layer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mgr.errors import ConfigError
from mgr.models.layers import min_frames, pad_frames, resolve_config

__all__ = ["CNN", "CNN_PRESETS"]

#: per-preset defaults; explicit keyword arguments override them (except for ``paper``)
CNN_PRESETS: dict[str, dict] = {
    "paper": {"channels": 256, "kernel": 4, "stride": 2, "pool": 2, "n_blocks": 3,
              "batch_norm": False, "hidden": 0, "dropout": 0.5},
    "mgr": {"channels": 256, "kernel": 4, "stride": 1, "pool": 2, "n_blocks": 3,
            "batch_norm": True, "hidden": 256, "dropout": 0.5},
}


class CNN(nn.Module):
    """Convolutional genre classifier over log-mel frames.

    Parameters
    ----------
    n_classes : int
        Number of genres.
    n_mels : int
        Mel bands (input channels).
    preset : {"paper", "mgr"}
        ``paper`` is the published architecture and ignores the other options.
    channels, kernel, stride, pool, n_blocks, batch_norm, hidden, dropout
        Overrides of the ``mgr`` preset.

    Notes
    -----
    ``forward(x)`` takes ``[batch, n_mels, n_frames]`` (normalised) for any ``n_frames``
    (inputs shorter than :attr:`min_frames` are right-padded with zeros) and returns
    log-probabilities ``[batch, n_classes]``.
    """

    def __init__(self, n_classes: int, n_mels: int = 128, *, preset: str = "paper", **options) -> None:
        super().__init__()
        cfg = resolve_config("cnn", CNN_PRESETS, preset, n_classes, n_mels, options)
        self.preset = preset
        self.n_classes, self.n_mels = int(n_classes), int(n_mels)
        self.config = cfg
        ch, k, s, p = cfg["channels"], cfg["kernel"], cfg["stride"], cfg["pool"]
        self.convs = nn.ModuleList(
            nn.Conv1d(n_mels if i == 0 else ch, ch, kernel_size=k, stride=s) for i in range(cfg["n_blocks"])
        )
        self.norms = (
            nn.ModuleList(nn.BatchNorm1d(ch) for _ in range(cfg["n_blocks"])) if cfg["batch_norm"] else None
        )
        self.pool = nn.MaxPool1d(p)
        self.dropout = nn.Dropout(cfg["dropout"])
        if cfg["hidden"]:
            self.hidden = nn.Linear(2 * ch, cfg["hidden"])
            self.dense = nn.Linear(cfg["hidden"], n_classes)
        else:
            self.hidden = None
            self.dense = nn.Linear(2 * ch, n_classes)
        self.min_frames = min_frames([(k, s, p)] * cfg["n_blocks"])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, n_mels, T]`` → pooled features ``[batch, 2 * channels]`` ([GAP, GMP])."""
        if x.ndim != 3 or x.shape[1] != self.n_mels:
            raise ConfigError(f"cnn expects input [batch, {self.n_mels}, n_frames], got {tuple(x.shape)}")
        h = pad_frames(x, self.min_frames)
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if self.norms is not None:
                h = self.norms[i](h)
            h = self.pool(F.relu(h))
        return torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[batch, n_classes]`` of ``x`` ``[batch, n_mels, n_frames]``."""
        h = self.dropout(self.embed(x))
        if self.hidden is not None:
            h = self.dropout(F.relu(self.hidden(h)))
        return F.log_softmax(self.dense(h).float(), dim=-1)
