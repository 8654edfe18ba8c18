"""Model 1 of the paper: 1D convolutions, an LSTM, a softmax at every time step.

The clip's distribution is ``P = Σ_t w_t P_t`` with ``w_t = t / Σ t`` (``weighted``: the
last step weighs most; the weights sum to 1) or ``w_t = 1 / n`` (``mean``). The per-step
distributions :meth:`CRNN.step_probs` show how the decision forms over a track.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mgr.errors import ConfigError
from mgr.models.layers import ConvBlock, min_frames, pad_frames, resolve_config, time_weights

__all__ = ["CRNN", "CRNN_PRESETS", "AVERAGES"]

AVERAGES = ("weighted", "mean")

#: ``paper``: the reference code's configuration (conv length 4 as the paper says)
CRNN_PRESETS: dict[str, dict] = {
    "paper": {"channels": 256, "kernel": 4, "pool": 2, "n_blocks": 3, "hidden": 256,
              "batch_norm": False, "dropout": 0.5},
    "mgr": {"channels": 256, "kernel": 4, "pool": 2, "n_blocks": 3, "hidden": 256,
            "batch_norm": True, "dropout": 0.3},
}


class CRNN(nn.Module):
    """Convolutional-recurrent genre classifier with per-step softmax.

    Parameters
    ----------
    n_classes : int
        Number of genres.
    n_mels : int
        Mel bands (input channels).
    average : {"weighted", "mean"}
        How per-step distributions become the clip's; may be switched later by setting
        :attr:`average`.
    preset : {"paper", "mgr"}
        ``paper`` is the reference configuration and ignores other options.
    channels, kernel, pool, n_blocks, hidden, batch_norm, dropout
        Overrides of the ``mgr`` preset.
    """

    def __init__(self, n_classes: int, n_mels: int = 128, *, average: str = "weighted",
                 preset: str = "paper", **options) -> None:
        super().__init__()
        cfg = resolve_config("crnn", CRNN_PRESETS, preset, n_classes, n_mels, options)
        self.preset, self.config = preset, cfg
        self.n_classes, self.n_mels = int(n_classes), int(n_mels)
        self.average = average
        ch = cfg["channels"]
        self.blocks = nn.Sequential(*[
            ConvBlock(n_mels if i == 0 else ch, ch, kernel=cfg["kernel"], pool=cfg["pool"],
                      batch_norm=cfg["batch_norm"])
            for i in range(cfg["n_blocks"])
        ])
        self.dropout = nn.Dropout(cfg["dropout"])
        self.lstm = nn.LSTM(ch, cfg["hidden"], batch_first=True)
        self.dense = nn.Linear(cfg["hidden"], n_classes)
        self.min_frames = min_frames([(cfg["kernel"], 1, cfg["pool"])] * cfg["n_blocks"])

    @property
    def average(self) -> str:
        return self._average

    @average.setter
    def average(self, value: str) -> None:
        if value not in AVERAGES:
            raise ConfigError(f"crnn average must be one of {AVERAGES}, got {value!r}")
        self._average = value

    def step_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step log-probabilities ``[batch, n_steps, n_classes]`` of ``[batch, n_mels, T]``."""
        if x.ndim != 3 or x.shape[1] != self.n_mels:
            raise ConfigError(f"crnn expects input [batch, {self.n_mels}, n_frames], got {tuple(x.shape)}")
        h = self.blocks(pad_frames(x, self.min_frames))          # [B, C, S]
        h = self.dropout(h).transpose(1, 2)                      # [B, S, C]
        h, _ = self.lstm(h)
        return F.log_softmax(self.dense(self.dropout(h)).float(), dim=-1)

    def step_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step distributions ``[batch, n_steps, n_classes]``."""
        return self.step_log_probs(x).exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the averaged distribution, ``[batch, n_classes]``."""
        logp = self.step_log_probs(x)
        w = time_weights(logp.shape[1], average=self.average, device=logp.device, dtype=logp.dtype)
        return torch.logsumexp(logp + w.log()[None, :, None], dim=1)

    def extra_repr(self) -> str:
        return f"average={self.average!r}, min_frames={self.min_frames}"
