"""Benchmark: training samples/s of Ray Train (N workers) vs a plain single-process PyTorch loop.

Both sides do the same work per epoch on the same data: one pass over the train split
(random crops or whole clips as the recipe says, same global batch) and window-voting
evaluation of the val split. The plain loop gets the same CPUs (``torch.set_num_threads(N)``);
each Ray worker gets one CPU. Throughput is train samples per second of epoch time, first
epoch (warm-up) excluded on both sides, from the median epoch (``samples_per_s``) and the
fastest (``samples_per_s_best``), which resist other load on the machine; Ray Train's fixed
start-up (worker group, process group, dataset set-up, export) is reported apart.

    .venv/bin/python tests/bench/bench_train.py [--workers 1 2] [--model cnn] [--preset paper]

Prints one JSON line per measurement and a summary line with the overhead
``1 - ray_samples_per_s / plain_samples_per_s`` for each N. ``--plain-only --device cuda``
runs just the plain loop (pure torch, no Ray needed), e.g. on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mgr.inference.predict import predict_tracks
from mgr.training import engine  # noqa: E402
from mgr.audio.features import pad_value  # noqa: E402
from mgr.datasets.featureset import feature_config, read_manifest, to_arrays  # noqa: E402
from mgr.models import build_model  # noqa: E402
from mgr.pipelines.train import _split_table  # noqa: E402
from tests.featgen import write_features  # noqa: E402


def plain_loop(features: str, *, model: str, preset: str, epochs: int, threads: int, device: str,
               batch_size: int | None, crop_seconds: float | None) -> dict:
    torch.set_num_threads(threads)
    manifest = read_manifest(features)
    fcfg = feature_config(manifest)
    genres = manifest["genres"]
    recipe = engine.resolve_recipe(model, preset=preset, feature_config=fcfg, crop_seconds=crop_seconds,
                                   epochs=epochs, batch_size=batch_size, seed=0)
    train_t, y = _split_table(features, "train", genres, endpoint_url=None)
    val_t, y_val = _split_table(features, "val", genres, endpoint_url=None)
    mels, val_mels = to_arrays(train_t), to_arrays(val_t)
    mean, std = engine.band_stats(mels, n_mels=fcfg.n_mels)
    dev = torch.device(device)
    engine.set_seed(0)
    net = build_model(model, **recipe.model_config(n_classes=len(genres), n_mels=fcfg.n_mels)).to(dev)
    opt = engine.make_optimizer(net, recipe)
    scaler = engine.make_scaler(dev)
    pad = pad_value(fcfg)
    steps = -(-len(mels) // recipe.batch_size)
    times = []
    for epoch in range(epochs):
        rng = np.random.default_rng([0, epoch])
        t0 = time.perf_counter()
        batches = engine.iter_batches(mels, y, batch_size=recipe.batch_size, width=recipe.window_frames, pad=pad,
                                      rng=rng, random_crop=recipe.crop)
        engine.train_epoch(net, batches,
                           optimizer=opt, recipe=recipe, epoch=epoch, steps_per_epoch=steps, device=dev,
                           mean=mean, std=std, scaler=scaler)
        probs = predict_tracks(net, val_mels, width=recipe.window_frames, pad=pad, mean=mean, std=std,
                                      device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        val_acc = float((probs.argmax(1) == y_val).mean())
    timed = times[1:] or times
    return {"kind": "plain", "threads": threads, "device": str(dev),
            "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
            "n_train": len(mels), "epochs": epochs, "epoch_s": [round(t, 3) for t in times],
            "samples_per_s": round(len(mels) / float(np.median(timed)), 2),
            "samples_per_s_best": round(len(mels) / min(timed), 2), "val_accuracy": val_acc}


def ray_train(features: str, *, model: str, preset: str, epochs: int, workers: int,
              batch_size: int | None, crop_seconds: float | None) -> dict:
    from mgr.pipelines.train import train

    out = tempfile.mkdtemp(prefix="mgr-bench-train-")
    try:
        t0 = time.perf_counter()
        summary = train(features, out, model=model, preset=preset, workers=workers, epochs=epochs,
                        batch_size=batch_size, crop_seconds=crop_seconds, patience=epochs + 1, verbose=False)
        wall = time.perf_counter() - t0
        with open(os.path.join(out, "metrics.jsonl")) as fh:
            history = [json.loads(line) for line in fh]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    times = [h["time_s"] for h in history]
    timed = times[1:] or times
    n = history[0]["samples"]
    return {"kind": "ray_train", "workers": workers, "n_train": n, "epochs": epochs,
            "epoch_s": times, "data_s": [h["data_s"] for h in history], "val_s": [h["val_s"] for h in history],
            "samples_per_s": round(n / float(np.median(timed)), 2),
            "samples_per_s_best": round(n / min(timed), 2),
            "wall_s": round(wall, 2), "fixed_overhead_s": round(wall - sum(times), 2),
            "val_accuracy": history[-1]["val_accuracy"], "test_accuracy": summary["test_accuracy"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", default=None, help="features dataset (default: a generated one)")
    ap.add_argument("--model", default="cnn", choices=["cnn", "crnn"])
    ap.add_argument("--preset", default="paper", choices=["paper", "mgr"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=None, help="global batch (default: the recipe's)")
    ap.add_argument("--crop-seconds", type=float, default=None)
    ap.add_argument("--clips", type=int, default=24, help="generated clips per genre in the train split")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--plain-only", action="store_true")
    args = ap.parse_args()
    tmp = None
    features = args.features
    if features is None:
        tmp = tempfile.mkdtemp(prefix="mgr-bench-feat-")
        features = os.path.join(tmp, "feat")
        write_features(features, n_genres=8, n_mels=128, frames=647,
                       per_split={"train": args.clips, "val": max(2, args.clips // 4), "test": 2})
    common = dict(model=args.model, preset=args.preset, epochs=args.epochs, batch_size=args.batch_size,
                  crop_seconds=args.crop_seconds)
    results = []
    try:
        for n in args.workers:
            plain = plain_loop(features, threads=n, device=args.device, **common)
            print(json.dumps(plain), flush=True)
            results.append(plain)
        if not args.plain_only:
            import ray

            from mgr.pipelines.runtime import ray_session

            with ray_session(num_cpus=max(args.workers)):
                ray.data.DataContext.get_current().enable_progress_bars = False
                for n in args.workers:
                    r = ray_train(features, workers=n, **common)
                    base = next(p for p in results if p["kind"] == "plain" and p["threads"] == n)
                    r["overhead_vs_plain"] = round(1.0 - r["samples_per_s"] / base["samples_per_s"], 4)
                    print(json.dumps(r), flush=True)
                    results.append(r)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = {"kind": "summary", "model": args.model, "preset": args.preset, "cpus": os.cpu_count(),
               "plain_samples_per_s": {p["threads"]: p["samples_per_s"] for p in results if p["kind"] == "plain"},
               "ray_samples_per_s": {r["workers"]: r["samples_per_s"] for r in results if r["kind"] == "ray_train"},
               "ray_overhead": {r["workers"]: r["overhead_vs_plain"] for r in results if r["kind"] == "ray_train"}}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
