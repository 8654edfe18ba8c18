"""Frozen, validated configuration objects and their presets.

The ``paper`` feature preset is the reference code's exactly: 22050 Hz mono, n_fft 2048,
hop 1024, 128 mel bands of power, exact zeros set to 1e-6, natural log; a 30-s clip is
647 frames.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from mgr.errors import ConfigError

__all__ = ["FeatureConfig", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class FeatureConfig:
    """How audio becomes a log-mel spectrogram.

    Parameters
    ----------
    preset : str
        Name recorded in ``features.json`` and ``model.json``.
    sr : int
        Sample rate audio is resampled to.
    mono : bool
        Downmix to one channel.
    n_fft, hop_length, n_mels : int
        STFT size, hop and number of mel bands.
    fmin : float
        Lowest mel frequency; ``fmax`` None means ``sr / 2``.
    power : float
        Exponent of the magnitude (2.0: power spectrogram).
    floor : float
        Exact zeros are replaced by this value before the natural log.
    clip_frames : int
        Frames of a training clip: 647 for the paper (a GTZAN clip is 30.01 s).
    """

    preset: str = "paper"
    sr: int = 22050
    mono: bool = True
    n_fft: int = 2048
    hop_length: int = 1024
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    power: float = 2.0
    floor: float = 1e-6
    clip_frames: int = 647

    def __post_init__(self) -> None:
        for name in ("sr", "n_fft", "hop_length", "n_mels", "clip_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"FeatureConfig.{name} must be a positive integer, got {value!r}")
        if self.hop_length > self.n_fft:
            raise ConfigError("FeatureConfig.hop_length must not exceed n_fft")
        if self.fmax is not None and not (self.fmin < self.fmax <= self.sr / 2):
            raise ConfigError(f"FeatureConfig.fmax must lie in (fmin, sr/2], got {self.fmax}")
        if self.power <= 0 or self.floor <= 0:
            raise ConfigError("FeatureConfig.power and floor must be positive")

    def frames_for_samples(self, n_samples: int) -> int:
        """Number of centred STFT frames librosa yields for ``n_samples`` samples."""
        return 1 + n_samples // self.hop_length

    def frames_for_seconds(self, seconds: float) -> int:
        """Number of frames covering ``seconds`` of audio (at least 1)."""
        return max(1, int(math.floor(seconds * self.sr / self.hop_length)) + 1)

    def frame_seconds(self, n_frames: float) -> float:
        """Seconds spanned by ``n_frames`` hops."""
        return float(n_frames) * self.hop_length / self.sr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown feature settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


PRESETS: dict[str, FeatureConfig] = {
    "paper": FeatureConfig(),
    # Same analysis at twice the time resolution, for users who want finer segments.
    "fine": FeatureConfig(preset="fine", hop_length=512, clip_frames=1293),
}


def get_preset(name: str) -> FeatureConfig:
    """Return the feature preset ``name`` or raise :class:`ConfigError` listing the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown feature preset {name!r}; choose one of {sorted(PRESETS)}") from None
