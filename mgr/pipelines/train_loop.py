"""The per-worker training loop run by Ray Train (imported on the workers only).

Each worker streams its shard of the train split through Ray Data (windows already cut and
stored as float16 by the ingest tasks; pinned and copied without blocking on a GPU), trains
a DDP replica, scores its shard of the val split by window voting (each val track on exactly
one worker) and all-reduces the sums (accuracy and the val loss: the mean cross-entropy of
the track distributions), so every worker takes the same early-stopping decision. Rank 0
writes a checkpoint every epoch (``state.pt``: model, optimizer, best weights, history)
through ``ray.train.report``; a restarted or re-run job resumes from the latest one.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time

import numpy as np
import torch

from mgr.datasets.featureset import decode_mels
from mgr.inference.predict import predict_tracks
from mgr.models import build_model
from mgr.training import engine

__all__ = ["STATE_FILE", "train_loop_per_worker", "load_state", "say"]

STATE_FILE = "state.pt"


def say(line: str) -> None:
    """Progress line to the worker's stdout (bypasses Ray Train's print-to-logger patch,
    which would show every line twice on the driver)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def load_state(checkpoint) -> dict | None:
    """The training state of a Ray checkpoint (None when there is none)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as path:
        return torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=True)


def _all_reduce(values: list[float], device: torch.device, world: int) -> list[float]:
    if world <= 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def _maybe_fail(cfg: dict, *, epoch: int, rank: int) -> None:
    """Test hook: kill this worker process once at ``epoch`` (a marker file makes it once)."""
    inject = cfg.get("inject_failure")
    if not inject or inject["epoch"] != epoch or inject["rank"] != rank:
        return
    if os.path.exists(inject["marker"]):
        return
    with open(inject["marker"], "w") as fh:
        fh.write(f"worker {rank} killed at epoch {epoch}\n")
    os._exit(1)


def _validate(model, val_shard, *, cfg: dict, recipe, device, world: int) -> tuple[float, float, int]:
    """Val accuracy, loss and track count over all workers (window voting on each worker's shard,
    sums all-reduced).

    The loss is the mean cross-entropy ``-log p(y)`` of the track distributions.
    """
    correct = loss_sum = count = 0.0
    for batch in val_shard.iter_batches(batch_size=32, batch_format="numpy", prefetch_batches=1):
        mels = decode_mels(batch["mel"], batch["n_mels"], batch["n_frames"])
        if not mels:
            continue
        y = batch["y"].astype(np.int64)
        probs = predict_tracks(model, mels, width=recipe.window_frames, pad=cfg["pad_value"], mean=cfg["mean"],
                               std=cfg["std"], device=device)
        correct += float((probs.argmax(1) == y).sum())
        loss_sum += float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).sum())
        count += len(y)
    total_correct, total_loss, total = _all_reduce([correct, loss_sum, count], device, world)
    return total_correct / max(total, 1.0), total_loss / max(total, 1.0), int(total)


def _train_batches(shard, *, per_worker: int, recipe, epoch: int, device):
    """``(x [B, n_mels, W] float16, y [B])`` torch batches of this worker's shard, pinned for a GPU."""
    for batch in shard.iter_torch_batches(batch_size=per_worker, prefetch_batches=2, device="cpu",
                                          pin_memory=device.type == "cuda",
                                          local_shuffle_buffer_size=max(4 * per_worker, 256),
                                          local_shuffle_seed=recipe.seed * 7919 + epoch):
        yield batch["x"], batch["y"]


def train_loop_per_worker(cfg: dict) -> None:
    """Ray Train entry point; ``cfg`` is built by :func:`mgr.pipelines.train.train`."""
    import ray.train
    import ray.train.torch

    # one console line per epoch: silence the per-report INFO lines of Ray Train's worker context
    # (that module names its logger after its file path)
    from ray.train.v2._internal.execution import context as _train_context

    logging.getLogger(_train_context.__file__).setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    recipe = engine.TrainRecipe(**cfg["recipe"])
    device = ray.train.torch.get_device()
    engine.set_seed(recipe.seed)
    model = build_model(recipe.architecture, **cfg["model_config"])
    state = load_state(ray.train.get_checkpoint())
    if state is not None:
        model.load_state_dict(state["model"])
    model = ray.train.torch.prepare_model(model)
    core = getattr(model, "module", model)
    optimizer = engine.make_optimizer(model, recipe)
    scaler = engine.make_scaler(device)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    history = list(state["history"]) if state else []
    stopper = engine.EarlyStopping(recipe.patience)
    best_weights = None
    if state is not None:
        stopper = engine.EarlyStopping(recipe.patience, best=state["best_val_accuracy"],
                                       best_epoch=state["best_epoch"], since_best=state["since_best"])
        best_weights = state["best_model"]
    start = state["epoch"] + 1 if state else 0
    if state is not None and rank == 0:
        say(f"mgr train: resuming after epoch {start} (best val accuracy "
            f"{stopper.best:.3f} at epoch {stopper.best_epoch + 1})")
    if state is not None and (state["finished"] or start >= recipe.epochs):
        if rank == 0:
            say("mgr train: nothing left to train in this OUTPUT")
        return
    per_worker = max(1, recipe.batch_size // world)
    steps = max(1, -(-cfg["n_train"] // world // per_worker))
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    for epoch in range(start, recipe.epochs):
        t0 = time.perf_counter()
        engine.set_seed(recipe.seed * 100003 + epoch * 1009 + rank)
        batches = engine.TimedBatches(
            _train_batches(train_shard, per_worker=per_worker, recipe=recipe, epoch=epoch, device=device),
            on_batch=lambda i, e=epoch: _maybe_fail(cfg, epoch=e, rank=rank) if i == 0 else None)
        stats = engine.train_epoch(model, batches, optimizer=optimizer, recipe=recipe, epoch=epoch,
                                   steps_per_epoch=steps, device=device, mean=cfg["mean"], std=cfg["std"],
                                   scaler=scaler)
        train_s = time.perf_counter() - t0
        loss_sum, correct, count = _all_reduce([stats["loss_sum"], stats["correct"], stats["count"]],
                                               device, world)
        t_val = time.perf_counter()
        val_acc, val_loss, val_n = _validate(core, val_shard, cfg=cfg, recipe=recipe, device=device, world=world)
        val_s = time.perf_counter() - t_val
        if stopper.update(val_acc, epoch=epoch):
            best_weights = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
        finished = stopper.finished
        metrics = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(count, 1.0),
            "accuracy": correct / max(count, 1.0),
            "val_accuracy": val_acc,
            "val_loss": val_loss,
            "best_val_accuracy": stopper.best,
            "lr": optimizer.param_groups[0]["lr"],
            "time_s": round(time.perf_counter() - t0, 3),
            "train_s": round(train_s, 3),
            "data_s": round(batches.wait_s, 3),
            "data_wait_share": round(batches.wait_s / max(train_s, 1e-9), 4),
            "samples_per_s": round(count / max(train_s, 1e-9), 2),
            "val_s": round(val_s, 3),
            "samples": int(count),
            "val_samples": val_n,
            "workers": world,
        }
        history.append(metrics)
        if rank == 0:
            say(f"epoch {epoch + 1}/{recipe.epochs}  loss {metrics['loss']:.4f}  acc {metrics['accuracy']:.3f}"
                f"  val loss {val_loss:.4f}  val acc {val_acc:.3f}  lr {metrics['lr']:.2e}"
                f"  {metrics['samples_per_s']:.0f} samples/s  data wait {100 * metrics['data_wait_share']:.0f}%"
                f"  {metrics['time_s']:.1f}s" + ("  (early stop)" if finished else ""))
            with tempfile.TemporaryDirectory() as tmp:
                torch.save({
                    "model": {k: v.detach().cpu() for k, v in core.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "best_model": best_weights,
                    "best_val_accuracy": stopper.best,
                    "best_epoch": stopper.best_epoch,
                    "since_best": stopper.since_best,
                    "history": history,
                    "finished": finished,
                }, os.path.join(tmp, STATE_FILE))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        if finished:
            break
