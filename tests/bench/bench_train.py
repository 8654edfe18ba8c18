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

Scaling mode (``--scaling [--n 1000]``): the same ``mgr train`` command, each run in its own
process (the driver), on synthetic features datasets of a tiny baseline, N and 4N clips of
128x647 written in the dataset format; prints per size the driver's peak RSS, its growth
above the baseline, and the train samples/s (median epoch after the first), then the ratios
4N/N that issue 14 aims at (memory <= 1.25x, samples/s >= 0.9x) and the plain loop's
samples/s on the N dataset.
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
from mgr.training import arrays, engine  # noqa: E402
from mgr.audio.features import pad_value  # noqa: E402
from mgr.datasets.featureset import feature_config, read_manifest, to_arrays  # noqa: E402
from mgr.models import build_model  # noqa: E402
from mgr.datasets.featureset import read_table  # noqa: E402
from tests.featgen import write_features  # noqa: E402


def plain_loop(features: str, *, model: str, preset: str, epochs: int, threads: int, device: str,
               batch_size: int | None, crop_seconds: float | None) -> dict:
    torch.set_num_threads(threads)
    manifest = read_manifest(features)
    fcfg = feature_config(manifest)
    genres = manifest["genres"]
    recipe = engine.resolve_recipe(model, preset=preset, feature_config=fcfg, crop_seconds=crop_seconds,
                                   epochs=epochs, batch_size=batch_size, seed=0)
    index = {g: i for i, g in enumerate(genres)}
    train_t = read_table(features, columns=["label", "n_mels", "n_frames", "mel"], splits=["train"], ok_only=True)
    val_t = read_table(features, columns=["label", "n_mels", "n_frames", "mel"], splits=["val"], ok_only=True)
    y = np.array([index[lab] for lab in train_t.column("label").to_pylist()])
    y_val = np.array([index[lab] for lab in val_t.column("label").to_pylist()])
    mels, val_mels = to_arrays(train_t), to_arrays(val_t)
    mean, std = arrays.band_stats(mels, n_mels=fcfg.n_mels)
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
        batches = arrays.iter_batches(mels, y, batch_size=recipe.batch_size, width=recipe.window_frames, pad=pad,
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
    from mgr.pipelines.train_config import TrainJobConfig

    out = tempfile.mkdtemp(prefix="mgr-bench-train-")
    try:
        t0 = time.perf_counter()
        summary = train(TrainJobConfig(features, out, model=model, preset=preset, workers=workers, epochs=epochs,
                                       batch_size=batch_size, crop_seconds=crop_seconds, patience=epochs + 1,
                                       verbose=False))
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


_DRIVER = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
from mgr.cli import main
t0 = time.time()
code = main(sys.argv[2:])
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child started by a
# bench that holds 1 GB would report 1 GB whatever it did itself
hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:"))
print("DRIVER " + json.dumps({"code": code, "wall_s": round(time.time() - t0, 2), "peak_rss_mb": round(hwm / 1024, 1)}))
"""


def scaling_features(root: str, *, clips: int, seed: int = 0) -> str:
    """A features dataset of ``clips`` 128x647 clips (70/20/10 %, 8 genres), ~100 clips per file."""
    if os.path.exists(os.path.join(root, "_features.json")):
        return root
    per_genre = max(1, clips // 8)
    per_split = {"train": max(1, round(per_genre * 0.7)), "val": max(1, round(per_genre * 0.2)),
                 "test": max(1, per_genre - round(per_genre * 0.7) - round(per_genre * 0.2))}
    write_features(root, n_genres=8, n_mels=128, frames=647, per_split=per_split, seed=seed,
                   n_files=max(1, clips // 100))
    return root


def train_driver(features: str, *, workers: int, epochs: int, model: str, preset: str,
                 batch_size: int | None) -> dict:
    """``mgr train`` in a fresh process; its peak RSS and the samples/s of its metrics.jsonl."""
    import subprocess

    out = tempfile.mkdtemp(prefix="mgr-bench-scale-")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = [sys.executable, "-c", _DRIVER, root, "train", features, os.path.join(out, "m"), "--model", model,
           "--preset", preset, "--workers", str(workers), "--epochs", str(epochs), "--patience", str(epochs + 1),
           "--num-cpus", str(os.cpu_count())]
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    try:
        for _ in range(4):  # an overloaded machine may fail to start Ray in time: try again
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if "timed out during startup" not in proc.stderr:
                break
        line = next((x for x in proc.stdout.splitlines() if x.startswith("DRIVER ")), None)
        if line is None:
            raise RuntimeError(f"mgr train failed: {(proc.stderr or proc.stdout)[-2000:]}")
        res = json.loads(line[len("DRIVER "):])
        if res["code"] != 0:
            raise RuntimeError(f"mgr train exited {res['code']}: {proc.stderr[-2000:]}")
        with open(os.path.join(out, "m", "metrics.jsonl")) as fh:
            history = [json.loads(x) for x in fh]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    timed = history[1:] or history
    res.update(n_train=history[0]["samples"], epochs=len(history),
               samples_per_s=round(float(np.median([h["samples_per_s"] for h in timed])), 2),
               data_wait_share=[h.get("data_wait_share") for h in history],
               epoch_s=[h["time_s"] for h in history])
    return res


def scaling(args) -> int:
    work = args.workdir or tempfile.mkdtemp(prefix="mgr-bench-scaling-")
    sizes = {"baseline": args.baseline, "N": args.n, "4N": 4 * args.n}
    rows = {}
    try:
        for name, clips in sizes.items():
            feat = scaling_features(os.path.join(work, f"feat-{clips}"), clips=clips)
            r = train_driver(feat, workers=args.workers[-1], epochs=args.epochs, model=args.model,
                             preset=args.preset, batch_size=args.batch_size)
            r.update(kind="scaling", size=name, clips=clips)
            rows[name] = r
            print(json.dumps(r), flush=True)
        plain = None
        if not args.no_plain:
            plain = plain_loop(os.path.join(work, f"feat-{args.n}"), model=args.model, preset=args.preset,
                               epochs=args.epochs, threads=args.workers[-1], device=args.device,
                               batch_size=args.batch_size, crop_seconds=None)
            print(json.dumps(plain), flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    base = rows["baseline"]["peak_rss_mb"]
    growth = {k: round(r["peak_rss_mb"] - base, 1) for k, r in rows.items()}
    summary = {"kind": "scaling_summary", "model": args.model, "preset": args.preset, "workers": args.workers[-1],
               "cpus": os.cpu_count(), "peak_rss_mb": {k: r["peak_rss_mb"] for k, r in rows.items()},
               "growth_above_baseline_mb": growth,
               "peak_ratio_4N_over_N": round(rows["4N"]["peak_rss_mb"] / rows["N"]["peak_rss_mb"], 3),
               "samples_per_s": {k: r["samples_per_s"] for k, r in rows.items()},
               "samples_per_s_ratio_4N_over_N": round(rows["4N"]["samples_per_s"] / rows["N"]["samples_per_s"], 3),
               "plain_samples_per_s": plain["samples_per_s"] if plain else None,
               "ray_over_plain_at_N": round(rows["N"]["samples_per_s"] / plain["samples_per_s"], 3) if plain else None}
    print(json.dumps(summary), flush=True)
    return 0


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
    ap.add_argument("--scaling", action="store_true", help="driver memory and samples/s at N and 4N clips")
    ap.add_argument("--n", type=int, default=1000, help="scaling: clips of the N dataset")
    ap.add_argument("--baseline", type=int, default=48, help="scaling: clips of the tiny baseline dataset")
    ap.add_argument("--workdir", default=None, help="scaling: keep the generated datasets here (reused)")
    ap.add_argument("--no-plain", action="store_true", help="scaling: skip the plain PyTorch loop")
    args = ap.parse_args()
    if args.scaling:
        return scaling(args)
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
