"""The per-worker training loop run by Ray Train (imported on the workers only).

Each worker reads its shard of the train split through Ray Data, trains a DDP replica,
scores its share of the val split (rows ``idx % world == rank``) by window voting, and
all-reduces the sums so every worker takes the same early-stopping decision. Rank 0
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

from mgr.inference.predict import predict_tracks
from mgr.training import engine
from mgr.datasets.featureset import decode_mel
from mgr.models import build_model

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


def _decode(batch: dict, n_mels: int) -> list[np.ndarray]:
    return [decode_mel(m, n_mels, t) for m, t in zip(batch["mel"], batch["n_frames"])]


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


def _val_rows(val_iter, *, n_mels: int, rank: int, world: int) -> tuple[list[np.ndarray], np.ndarray]:
    """This worker's share of the val split (rows ``idx % world == rank``), read once."""
    mels, labels = [], []
    for batch in val_iter.iter_batches(batch_size=64, batch_format="numpy"):
        keep = np.flatnonzero(batch["idx"] % world == rank)
        if keep.size:
            sub = {k: batch[k][keep] for k in ("mel", "n_frames")}
            mels.extend(_decode(sub, n_mels))
            labels.extend(batch["y"][keep].tolist())
    return mels, np.asarray(labels, dtype=np.int64)


def _val_accuracy(model, mels, labels, *, cfg, recipe, device, world) -> float:
    """Val accuracy over all workers (window voting on each worker's share, sums all-reduced)."""
    correct = 0.0
    if mels:
        probs = predict_tracks(model, mels, width=recipe.window_frames, pad=cfg["pad_value"],
                                      mean=cfg["mean"], std=cfg["std"], device=device)
        correct = float((probs.argmax(1) == labels).sum())
    total_correct, total = _all_reduce([correct, float(len(labels))], device, world)
    return total_correct / max(total, 1.0)


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
    val_mels, val_labels = _val_rows(ray.train.get_dataset_shard("val"), n_mels=cfg["n_mels"], rank=rank,
                                     world=world)
    for epoch in range(start, recipe.epochs):
        t0 = time.perf_counter()
        engine.set_seed(recipe.seed * 100003 + epoch * 1009 + rank)
        rng = np.random.default_rng([recipe.seed, epoch, rank])

        data_s = [0.0]

        def batches():
            it = iter(train_shard.iter_batches(batch_size=per_worker, batch_format="numpy", prefetch_batches=2,
                                               local_shuffle_buffer_size=max(4 * per_worker, 256),
                                               local_shuffle_seed=recipe.seed * 7919 + epoch))
            while True:
                t_data = time.perf_counter()
                b = next(it, None)
                if b is None:
                    return
                _maybe_fail(cfg, epoch=epoch, rank=rank)
                mels = _decode(b, cfg["n_mels"])
                x = engine.crop_batch(mels, width=recipe.window_frames, pad=cfg["pad_value"],
                                      rng=rng if recipe.crop else None)
                data_s[0] += time.perf_counter() - t_data
                yield x, b["y"].astype(np.int64)

        stats = engine.train_epoch(model, batches(), optimizer=optimizer, recipe=recipe, epoch=epoch,
                                   steps_per_epoch=steps, device=device, mean=cfg["mean"], std=cfg["std"],
                                   scaler=scaler)
        loss_sum, correct, count = _all_reduce([stats["loss_sum"], stats["correct"], stats["count"]],
                                               device, world)
        t_val = time.perf_counter()
        val_acc = _val_accuracy(core, val_mels, val_labels, cfg=cfg, recipe=recipe, device=device, world=world)
        val_s = time.perf_counter() - t_val
        if stopper.update(val_acc, epoch=epoch):
            best_weights = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
        finished = stopper.finished
        metrics = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(count, 1.0),
            "accuracy": correct / max(count, 1.0),
            "val_accuracy": val_acc,
            "best_val_accuracy": stopper.best,
            "lr": optimizer.param_groups[0]["lr"],
            "time_s": round(time.perf_counter() - t0, 3),
            "data_s": round(data_s[0], 3),
            "val_s": round(val_s, 3),
            "samples": int(count),
            "workers": world,
        }
        history.append(metrics)
        if rank == 0:
            say(f"epoch {epoch + 1}/{recipe.epochs}  loss {metrics['loss']:.4f}  acc {metrics['accuracy']:.3f}"
                f"  val acc {val_acc:.3f}  lr {metrics['lr']:.2e}  {metrics['time_s']:.1f}s"
                + ("  (early stop)" if finished else ""))
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
