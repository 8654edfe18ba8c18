"""Pure-torch training and evaluation: recipes, crops, steps, crop voting, metrics (no Ray).

Everything device-dependent lives here so it runs on a GPU machine from saved arrays:
:func:`device_for` places work, :func:`autocast` turns on mixed precision on CUDA
(bfloat16 where supported, else float16 with a gradient scaler), :func:`train_epoch` runs
the steps, :func:`predict_tracks` does window (crop) voting, :func:`classification_metrics`
scores the predictions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from mgr.config import FeatureConfig
from mgr.errors import ConfigError
from mgr.features import cut_windows, window_starts

__all__ = [
    "RECIPE_PRESETS",
    "TrainRecipe",
    "resolve_recipe",
    "set_seed",
    "device_for",
    "autocast",
    "make_scaler",
    "make_optimizer",
    "lr_at",
    "band_stats",
    "crop_batch",
    "iter_batches",
    "train_epoch",
    "predict_tracks",
    "classification_metrics",
    "EarlyStopping",
]

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


@dataclass
class EarlyStopping:
    """Track the best val accuracy; ``finished`` after ``patience`` epochs without a better one.

    ``patience`` None never stops. The fields are plain numbers so the state checkpoints.
    """

    patience: int | None
    best: float = -1.0
    best_epoch: int = -1
    since_best: int = 0

    def update(self, value: float, *, epoch: int) -> bool:
        """Record ``value`` of ``epoch`` (0-based); return True when it is a new best."""
        if value > self.best:
            self.best, self.best_epoch, self.since_best = float(value), int(epoch), 0
            return True
        self.since_best += 1
        return False

    @property
    def finished(self) -> bool:
        return bool(self.patience) and self.since_best >= self.patience


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def device_for(use_gpu: bool) -> torch.device:
    """``cuda`` when asked for and available, else ``cpu``."""
    return torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")


def autocast(device: torch.device):
    """Mixed-precision context on CUDA (bfloat16 when supported, else float16); no-op on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def make_scaler(device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for float16 autocast on CUDA."""
    enabled = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=enabled)


def make_optimizer(model: torch.nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model.parameters()``."""
    params = model.parameters()
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay)


def lr_at(recipe: TrainRecipe, progress: float) -> float:
    """Learning rate at ``progress`` epochs (fractional): linear warm-up, then constant or cosine."""
    if recipe.warmup_epochs and progress < recipe.warmup_epochs:
        return recipe.lr * max(progress, 0.05) / recipe.warmup_epochs
    if recipe.schedule == "constant":
        return recipe.lr
    span = max(recipe.epochs - recipe.warmup_epochs, 1e-9)
    t = min(max((progress - recipe.warmup_epochs) / span, 0.0), 1.0)
    return recipe.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


def band_stats(mels: Iterable[np.ndarray], *, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std over every frame of ``mels`` (each ``[n_mels, T]``).

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``[n_mels]`` float64 mean and std (std floored at 1e-3).
    """
    total = np.zeros(n_mels)
    sq = np.zeros(n_mels)
    count = 0
    for m in mels:
        m64 = np.asarray(m, dtype=np.float64)
        total += m64.sum(axis=1)
        sq += np.square(m64).sum(axis=1)
        count += m64.shape[1]
    if count == 0:
        raise ConfigError("no training frames to compute normalisation statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
    return mean, np.maximum(std, 1e-3)


def crop_batch(mels: Sequence[np.ndarray], *, width: int, pad: float,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """Cut one window of ``width`` frames from each ``[n_mels, T]`` array.

    A random start when ``rng`` is given (augmentation), the first frames otherwise; clips
    shorter than ``width`` are right-padded with ``pad``.

    Returns
    -------
    np.ndarray
        ``[len(mels), n_mels, width]`` float32.
    """
    n_mels = mels[0].shape[0]
    out = np.full((len(mels), n_mels, width), pad, dtype=np.float32)
    for i, m in enumerate(mels):
        t = m.shape[1]
        if t <= width:
            out[i, :, :t] = m
            continue
        start = int(rng.integers(0, t - width + 1)) if rng is not None else 0
        out[i] = m[:, start: start + width]
    return out


def iter_batches(mels: Sequence[np.ndarray], labels: np.ndarray, *, batch_size: int, width: int,
                 pad: float, rng: np.random.Generator | None, shuffle: bool = True,
                 random_crop: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """In-memory batches ``(x [B, n_mels, width] float32, y [B] int64)`` (the no-Ray feed).

    ``rng`` shuffles (``shuffle``) and places random crops (``random_crop``; else the first
    ``width`` frames of each clip are taken).
    """
    order = rng.permutation(len(mels)) if (shuffle and rng is not None) else np.arange(len(mels))
    for lo in range(0, len(order), batch_size):
        idx = order[lo: lo + batch_size]
        x = crop_batch([mels[i] for i in idx], width=width, pad=pad, rng=rng if random_crop else None)
        yield x, labels[idx].astype(np.int64)


def _normalizer(mean, std, device):
    if mean is None:
        return None
    m = torch.as_tensor(np.asarray(mean, np.float32), device=device)[None, :, None]
    s = torch.as_tensor(np.asarray(std, np.float32), device=device)[None, :, None]
    return m, s


def train_epoch(model: torch.nn.Module, batches: Iterable[tuple[np.ndarray, np.ndarray]], *,
                optimizer: torch.optim.Optimizer, recipe: TrainRecipe, epoch: int, steps_per_epoch: int,
                device: torch.device, mean=None, std=None, scaler=None) -> dict[str, float]:
    """One pass over ``batches``; the learning rate follows :func:`lr_at` per step.

    Parameters
    ----------
    batches : iterable of (np.ndarray, np.ndarray)
        ``x [B, n_mels, W]`` raw log-mel (float) and ``y [B]`` class indices.
    mean, std : array-like, optional
        ``[n_mels]`` normalisation applied on ``device``.

    Returns
    -------
    dict
        ``loss_sum``, ``correct``, ``count`` (sums, so workers can all-reduce them), ``steps``.
    """
    model.train()
    norm = _normalizer(mean, std, device)
    scaler = scaler or make_scaler(device)
    loss_sum = 0.0
    correct = 0
    count = 0
    step = 0
    for step, (x, y) in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(recipe, epoch + min(step / max(steps_per_epoch, 1), 1.0))
        xt = torch.as_tensor(x, device=device, dtype=torch.float32)
        yt = torch.as_tensor(y, device=device, dtype=torch.long)
        if norm is not None:
            xt = (xt - norm[0]) / norm[1]
        with autocast(device):
            logp = model(xt)
        loss = F.nll_loss(logp.float(), yt) if not recipe.label_smoothing else _smoothed_nll(
            logp.float(), yt, recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = int(yt.shape[0])
        loss_sum += float(loss.detach()) * n
        correct += int((logp.detach().argmax(-1) == yt).sum())
        count += n
    return {"loss_sum": loss_sum, "correct": float(correct), "count": float(count), "steps": float(step + 1)}


def _smoothed_nll(logp: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Cross entropy with label smoothing on log-probabilities ``[B, C]``."""
    return (1.0 - eps) * F.nll_loss(logp, y) - eps * logp.mean(dim=-1).mean()


@torch.no_grad()
def predict_tracks(model: torch.nn.Module, mels: Sequence[np.ndarray], *, width: int, hop: int | None = None,
                   pad: float, mean=None, std=None, device: torch.device | None = None,
                   batch_size: int = 64) -> np.ndarray:
    """Track distributions by window voting (DESIGN.md: the mean of the windows' distributions).

    Parameters
    ----------
    mels : sequence of np.ndarray
        ``[n_mels, T]`` raw log-mel per track.
    width, hop : int
        Window length W and hop H (default ``W // 2``) in frames.

    Returns
    -------
    np.ndarray
        ``[len(mels), n_classes]`` float64 probabilities.
    """
    device = device or next(model.parameters()).device
    hop = hop or max(width // 2, 1)
    was_training = model.training
    model.eval()
    norm = _normalizer(mean, std, device)
    windows, owners = [], []
    for i, m in enumerate(mels):
        w = cut_windows(np.asarray(m, np.float32), window_starts(m.shape[1], width=width, hop=hop),
                        width=width, pad=pad)
        windows.append(w)
        owners.append(np.full(len(w), i))
    if not windows:
        model.train(was_training)
        return np.zeros((0, 0))
    all_w = np.concatenate(windows)
    owner = np.concatenate(owners)
    probs = []
    for lo in range(0, len(all_w), batch_size):
        xt = torch.as_tensor(all_w[lo: lo + batch_size], device=device)
        if norm is not None:
            xt = (xt - norm[0]) / norm[1]
        with autocast(device):
            probs.append(model(xt).float().exp().cpu().numpy().astype(np.float64))
    p = np.concatenate(probs)
    out = np.zeros((len(mels), p.shape[1]))
    np.add.at(out, owner, p)
    out /= np.bincount(owner, minlength=len(mels))[:, None]
    model.train(was_training)
    return out


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], *, genres: Sequence[str]) -> dict:
    """Accuracy, per-genre precision/recall/F1/support and the confusion matrix.

    Returns
    -------
    dict
        ``accuracy`` (float), ``n`` (int), ``per_genre`` ({genre: {precision, recall, f1,
        support}}), ``confusion`` (``[n_genres][n_genres]`` counts, rows true, columns
        predicted, in ``genres`` order), ``genres``.
    """
    k = len(genres)
    yt = np.asarray(y_true, dtype=np.int64)
    yp = np.asarray(y_pred, dtype=np.int64)
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (yt, yp), 1)
    per = {}
    for i, g in enumerate(genres):
        tp = conf[i, i]
        prec = tp / conf[:, i].sum() if conf[:, i].sum() else 0.0
        rec = tp / conf[i].sum() if conf[i].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[g] = {"precision": float(prec), "recall": float(rec), "f1": float(f1), "support": int(conf[i].sum())}
    n = int(len(yt))
    return {
        "accuracy": float((yt == yp).mean()) if n else 0.0,
        "n": n,
        "per_genre": per,
        "confusion": conf.tolist(),
        "genres": list(genres),
    }
