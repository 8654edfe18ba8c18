"""Training recipes: the paper's and mgr's optimiser, batch, schedule and input windows (no Ray).

``paper`` trains as the paper did (Model 2: Adam 1e-4, batch 256, whole 647-frame clips;
Model 1: RMSprop 1e-5, batch 64); ``mgr`` goes beyond it: random crops as augmentation
(and crop voting at evaluation), AdamW with a warm-up and a cosine schedule, label smoothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from mgr.config import FeatureConfig
from mgr.errors import ConfigError

__all__ = ["RECIPE_PRESETS", "TrainRecipe", "resolve_recipe", "lr_at"]

#: training recipes; ``paper`` trains as the paper did, ``mgr`` goes beyond it
RECIPE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "cnn": {"optimizer": "adam", "lr": 1e-4, "batch_size": 256, "weight_decay": 0.0,
                "schedule": "constant", "warmup_epochs": 0, "crop_seconds": None,
                "epochs": 100, "patience": 20, "label_smoothing": 0.0},
        "crnn": {"optimizer": "rmsprop", "lr": 1e-5, "batch_size": 64, "weight_decay": 0.0,
                 "schedule": "constant", "warmup_epochs": 0, "crop_seconds": None,
                 "epochs": 100, "patience": 20, "label_smoothing": 0.0},
    },
    "mgr": {
        arch: {"optimizer": "adamw", "lr": 1e-3, "batch_size": 64, "weight_decay": 1e-2,
               "schedule": "cosine", "warmup_epochs": 1, "crop_seconds": 5.0,
               "epochs": 60, "patience": 15, "label_smoothing": 0.1}
        for arch in ("cnn", "crnn")
    },
}
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainRecipe:
    """How a model is trained; see :data:`RECIPE_PRESETS`.

    ``window_frames`` is the input length W in frames: whole clips (``clip_frames``) when
    ``crop`` is False, else random crops of W frames (and crop voting at evaluation).
    """

    architecture: str
    preset: str
    window_frames: int
    crop: bool
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    weight_decay: float
    schedule: str
    warmup_epochs: int
    patience: int | None
    label_smoothing: float
    seed: int = 0
    average: str = "weighted"
    model_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.window_frames < 1:
            raise ConfigError("epochs, batch size and window length must be positive")
        if not (self.lr > 0):
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be at least 1 epoch, got {self.patience}")

    def model_config(self, *, n_classes: int, n_mels: int) -> dict:
        """Keyword arguments of :func:`mgr.models.build_model` for this recipe."""
        cfg = {"n_classes": int(n_classes), "n_mels": int(n_mels), "preset": self.preset, **self.model_options}
        if self.architecture == "crnn":
            cfg["average"] = self.average
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_recipe(architecture: str, *, preset: str, feature_config: FeatureConfig,
                   crop_seconds: float | None = None, **overrides) -> TrainRecipe:
    """The recipe of ``preset`` for ``architecture`` with ``overrides`` (None values ignored).

    Parameters
    ----------
    crop_seconds : float, optional
        Crop length; the ``mgr`` default is 5 s. The ``paper`` preset uses whole clips
        (``feature_config.clip_frames``) unless a crop is asked for.
    """
    if preset not in RECIPE_PRESETS:
        raise ConfigError(f"unknown training preset {preset!r}; choose one of {sorted(RECIPE_PRESETS)}")
    if architecture not in RECIPE_PRESETS[preset]:
        raise ConfigError(f"unknown model {architecture!r}; choose one of {sorted(RECIPE_PRESETS[preset])}")
    base = dict(RECIPE_PRESETS[preset][architecture])
    seconds = crop_seconds if crop_seconds is not None else base.pop("crop_seconds")
    base.pop("crop_seconds", None)
    base.update({k: v for k, v in overrides.items() if v is not None})
    if seconds is not None:
        if seconds <= 0:
            raise ConfigError(f"--crop-seconds must be positive, got {seconds}")
        width = min(feature_config.frames_for_seconds(seconds), feature_config.clip_frames)
        crop = width < feature_config.clip_frames
    else:
        width, crop = feature_config.clip_frames, False
    return TrainRecipe(architecture=architecture, preset=preset, window_frames=int(width), crop=crop, **base)


def lr_at(recipe: TrainRecipe, progress: float) -> float:
    """Learning rate at ``progress`` epochs (fractional): linear warm-up, then constant or cosine."""
    if recipe.warmup_epochs and progress < recipe.warmup_epochs:
        return recipe.lr * max(progress, 0.05) / recipe.warmup_epochs
    if recipe.schedule == "constant":
        return recipe.lr
    span = max(recipe.epochs - recipe.warmup_epochs, 1e-9)
    t = min(max((progress - recipe.warmup_epochs) / span, 0.0), 1.0)
    return recipe.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))
