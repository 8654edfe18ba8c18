"""Pure-torch training and evaluation: crops, steps, crop voting, metrics (no Ray).

Recipes live in :mod:`mgr.training.recipes` (re-exported here). Everything device-dependent lives
here so it runs on a GPU machine from saved arrays:
:func:`device_for` places work, :func:`autocast` turns on mixed precision on CUDA
(bfloat16 where supported, else float16 with a gradient scaler), :func:`train_epoch` runs
the steps (window voting lives in :mod:`mgr.inference.predict`), :func:`classification_metrics`
scores the predictions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from mgr.inference.predict import autocast
from mgr.training.recipes import RECIPE_PRESETS, TrainRecipe, lr_at, resolve_recipe

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
    "to_device",
    "TimedBatches",
    "train_epoch",
    "classification_metrics",
    "metrics_from_confusion",
    "EarlyStopping",
]

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


def to_device(x, y, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on ``device``: ``x`` as float32 ``[B, n_mels, W]``, ``y`` as int64 ``[B]``.

    The copy is non-blocking (it overlaps with the previous step when ``x`` sits in pinned
    memory, as :class:`TimedBatches` leaves it for CUDA); float16 inputs travel as float16
    and are widened on the device.
    """
    xt = torch.as_tensor(x)
    yt = torch.as_tensor(y)
    if device.type == "cuda" and not xt.is_pinned():
        xt = xt.pin_memory()
    xt = xt.to(device, non_blocking=True).float()
    yt = yt.to(device, non_blocking=True).long()
    return xt, yt


class TimedBatches:
    """Wrap a batch iterable; count the seconds spent waiting for each next batch.

    Attributes
    ----------
    wait_s : float
        Seconds blocked in ``next()`` of the wrapped iterable (the data stall).
    """

    def __init__(self, batches: Iterable, *, on_batch=None):
        self._batches = batches
        self._on_batch = on_batch
        self.wait_s = 0.0
        self.count = 0

    def __iter__(self):
        import time

        it = iter(self._batches)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait_s += time.perf_counter() - t0
            if self._on_batch is not None:
                self._on_batch(self.count)
            self.count += 1
            yield batch


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
    batches : iterable of (array, array)
        ``x [B, n_mels, W]`` raw log-mel (float16 or float32; numpy or torch, pinned for
        a non-blocking copy to a GPU) and ``y [B]`` class indices.
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
    # sums stay on the device: no host sync per step (the GPU runs ahead of the Python loop)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    step = 0
    for step, (x, y) in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(recipe, epoch + min(step / max(steps_per_epoch, 1), 1.0))
        xt, yt = to_device(x, y, device)
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
        loss_sum += loss.detach().double() * n
        correct += (logp.detach().argmax(-1) == yt).sum()
        count += n
    return {"loss_sum": float(loss_sum), "correct": float(correct), "count": float(count), "steps": float(step + 1)}


def _smoothed_nll(logp: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Cross entropy with label smoothing on log-probabilities ``[B, C]``."""
    return (1.0 - eps) * F.nll_loss(logp, y) - eps * logp.mean(dim=-1).mean()


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
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return metrics_from_confusion(conf, genres=genres)


def metrics_from_confusion(confusion, *, genres: Sequence[str]) -> dict:
    """:func:`classification_metrics` from a ``[n_genres, n_genres]`` confusion matrix
    (rows true, columns predicted), e.g. one summed over workers."""
    conf = np.asarray(confusion, dtype=np.int64)
    per = {}
    for i, g in enumerate(genres):
        tp = conf[i, i]
        prec = tp / conf[:, i].sum() if conf[:, i].sum() else 0.0
        rec = tp / conf[i].sum() if conf[i].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[g] = {"precision": float(prec), "recall": float(rec), "f1": float(f1), "support": int(conf[i].sum())}
    n = int(conf.sum())
    return {
        "accuracy": float(np.trace(conf) / n) if n else 0.0,
        "n": n,
        "per_genre": per,
        "confusion": conf.tolist(),
        "genres": list(genres),
    }
