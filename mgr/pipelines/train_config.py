"""The training job's configuration: one frozen, validated object built by the CLI (no Ray).

``mgr train`` builds a :class:`TrainJobConfig` from its arguments and hands it whole to
:func:`mgr.pipelines.train.train`; :func:`mgr.experiments.reproduce.reproduce` and the
benchmarks build one the same way. Every check a user can fail happens in
``__post_init__`` with a one-line :class:`~mgr.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mgr.errors import ConfigError
from mgr.io.location import Location

__all__ = ["TrainJobConfig", "AVERAGES"]

AVERAGES = ("weighted", "mean")


@dataclass(frozen=True)
class TrainJobConfig:
    """What ``mgr train FEATURES OUTPUT`` does.

    Attributes
    ----------
    features, output : Location
        Features dataset (``mgr extract`` OUTPUT) and the model directory to write (a str
        is turned into a Location).
    model : {"cnn", "crnn"}
    preset : {"paper", "mgr"}
        ``paper`` trains as the paper; ``mgr`` adds random crops, crop voting, AdamW with a
        cosine schedule and label smoothing.
    workers : int
        Ray Train workers (DDP replicas).
    use_gpu : bool
        One GPU per worker, mixed precision.
    epochs, batch_size, lr, crop_seconds, patience : optional
        Recipe overrides (None: the preset's); ``batch_size`` is global.
    average : {"weighted", "mean"}
        crnn step averaging.
    seed : int
        Training seed.
    split_seed : int, optional
        Train on another split of the same features: the extraction's split rule (its
        ratios and grouping, from ``_features.json``) with this seed, computed per row on
        the fly (no copy of the dataset). None: the stored ``split`` column.
    split_manifest : str, optional
        Train on the splits a manifest's ``split`` column gives (``uri`` and/or ``track_id``
        name the rows; see :class:`~mgr.datasets.sources.split.ManifestSplit`), read by the
        workers, no copy. Not with ``split_seed``.
    max_failures : int
        Worker failures to recover from (from the last checkpoint).
    address, num_cpus : optional
        Ray cluster address; CPUs of the embedded local Ray.
    model_options : dict
        Model size options (e.g. ``channels``, ``hidden``).
    inject_failure : dict, optional
        Test hook ``{"epoch", "rank", "marker"}``: that worker exits once at that epoch.
    verbose : bool
        Print the start line, epoch lines and the final summary.
    """

    features: Location
    output: Location
    model: str = "cnn"
    preset: str = "mgr"
    workers: int = 2
    use_gpu: bool = False
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    crop_seconds: float | None = None
    average: str = "weighted"
    patience: int | None = None
    seed: int = 0
    split_seed: int | None = None
    split_manifest: str | None = None
    max_failures: int = 3
    address: str | None = None
    num_cpus: int | None = None
    model_options: dict = field(default_factory=dict)
    inject_failure: dict | None = None
    verbose: bool = True

    def __post_init__(self) -> None:
        from mgr.models import MODELS
        from mgr.training.recipes import RECIPE_PRESETS

        object.__setattr__(self, "features", Location.of(self.features))
        object.__setattr__(self, "output", Location.of(self.output, endpoint_url=self.features.endpoint_url))
        object.__setattr__(self, "model_options", dict(self.model_options or {}))
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {sorted(MODELS)}")
        if self.preset not in RECIPE_PRESETS:
            raise ConfigError(f"unknown training preset {self.preset!r}; choose one of {sorted(RECIPE_PRESETS)}")
        if self.average not in AVERAGES:
            raise ConfigError(f"--average must be one of {AVERAGES}, got {self.average!r}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if self.crop_seconds is not None and not self.crop_seconds > 0:
            raise ConfigError(f"--crop-seconds must be positive, got {self.crop_seconds}")
        if self.max_failures < 0:
            raise ConfigError(f"--max-failures must be 0 or more, got {self.max_failures}")
        if self.split_seed is not None and self.split_seed < 0:
            raise ConfigError(f"--split-seed must be 0 or more, got {self.split_seed}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"--num-cpus must be at least 1, got {self.num_cpus}")
        if self.split_seed is not None and self.split_manifest is not None:
            raise ConfigError("--split-seed and --split-manifest both choose the split; give one")
        if self.split_manifest is not None:
            object.__setattr__(self, "split_manifest", Location.of(self.split_manifest).uri)

    @property
    def endpoint_url(self) -> str | None:
        """The S3 endpoint the workers get (the features' or the output's)."""
        return self.features.endpoint_url or self.output.endpoint_url

    def replace(self, **changes: Any) -> "TrainJobConfig":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)
