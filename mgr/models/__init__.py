"""The paper's two models (pure torch, no Ray) and their registry.

Every model maps ``[batch, n_mels, n_frames]`` (normalised log-mel, any ``n_frames``) to
log-probabilities ``[batch, n_classes]``.
"""

from __future__ import annotations

from mgr.errors import ConfigError
from mgr.models.cnn import CNN
from mgr.models.crnn import CRNN

__all__ = ["MODELS", "CNN", "CRNN", "build_model"]

MODELS = {"cnn": CNN, "crnn": CRNN}


def build_model(architecture: str, *, n_classes: int, n_mels: int = 128, **config):
    """Instantiate ``MODELS[architecture](n_classes, n_mels, **config)``.

    Raises
    ------
    ConfigError
        Unknown architecture or option.
    """
    try:
        cls = MODELS[architecture]
    except KeyError:
        raise ConfigError(f"unknown model {architecture!r}; choose one of {sorted(MODELS)}") from None
    try:
        return cls(int(n_classes), int(n_mels), **config)
    except TypeError as exc:
        raise ConfigError(f"bad {architecture} configuration {config}: {exc}") from None
