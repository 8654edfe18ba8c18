"""``mgr reproduce gtzan|fma --data DIR OUTPUT``: the paper's experiments and results table."""

from __future__ import annotations

import argparse
import json

from mgr.commands import add_ray_options, add_storage_options
from mgr.errors import ConfigError


def _names(text: str, allowed, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ConfigError(f"--{what} takes a comma-separated list of {', '.join(allowed)} (got {text!r})")
    return names


def _counts(text: str) -> list[int]:
    if text.strip().lower() in ("", "none", "0"):
        return []
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--scaling-workers takes worker counts like 1,2,4 or none (got {text!r})") from None


def register(sub) -> None:
    from mgr.experiments.reproduce import DATASETS, SPLITS

    p = sub.add_parser(
        "reproduce",
        help="reproduce the paper on GTZAN or FMA small: train both models per seed, write the results table",
        description="Extract DATA once, then for each seed (a new stratified 70/20/10 split per seed, or FMA's "
        "official split with --split official) train Model 1 (crnn; evaluated with the time-weighted and the "
        "plain-mean step average) and Model 2 (cnn), each with the paper's recipe and with mgr's defaults, and "
        "evaluate them on the test split. Writes OUTPUT/results.md and OUTPUT/results.json (test accuracy mean "
        "± std over seeds beside the paper's figures, test clips and the confidence that implies, training "
        "throughput per worker count), confusion matrices, learning curves and the crnn's per-step "
        "distributions (the paper's Figures 6-7). Re-running the same command resumes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dataset", choices=DATASETS, help="gtzan: a folder per genre; fma: fma_small + tracks.csv")
    p.add_argument("output", metavar="OUTPUT", help="output folder or s3:// prefix")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="audio: GTZAN's genres folder, or fma_small (folder or s3:// prefix)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0 .. N-1)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers per training run")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--epochs", type=int, default=None, help="epoch cap for every run (default: each recipe's)")
    p.add_argument("--split", choices=SPLITS, default="random",
                   help="random: a new stratified 70/20/10 split per seed; official: FMA's split")
    p.add_argument("--tracks", default=None, metavar="TRACKS_CSV",
                   help="FMA's fma_metadata/tracks.csv (default: looked for next to DATA)")
    p.add_argument("--models", default="crnn,cnn", help="models to train (crnn = Model 1, cnn = Model 2)")
    p.add_argument("--recipes", default="paper,mgr", help="training recipes (paper, mgr)")
    p.add_argument("--scaling-workers", default=None,
                   help="worker counts of the throughput runs, e.g. 1,2,4 or none (default: 1, 2, 4, ... --workers)")
    p.add_argument("--scaling-epochs", type=int, default=3, help="epochs of each throughput run")
    p.add_argument("--figure-clips", type=int, default=4, help="test clips drawn per crnn recipe (Figures 6-7)")
    p.add_argument("--json", action="store_true", help="print the results table as one JSON object")
    add_ray_options(p)
    add_storage_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mgr.experiments.reproduce import MODEL_ORDER, RECIPES, reproduce
    from mgr.experiments.results import pct

    results = reproduce(
        args.dataset, args.data, args.output,
        seeds=args.seeds, workers=args.workers, use_gpu=args.gpu, epochs=args.epochs, split=args.split,
        tracks=args.tracks, models=_names(args.models, MODEL_ORDER, "models"),
        recipes=_names(args.recipes, RECIPES, "recipes"),
        scaling_workers=None if args.scaling_workers is None else _counts(args.scaling_workers),
        scaling_epochs=args.scaling_epochs, figure_clips=args.figure_clips,
        address=args.address, num_cpus=args.num_cpus, endpoint_url=args.endpoint_url,
    )
    if args.json:
        print(json.dumps({"table": results["table"], "scaling": results["scaling"]}, sort_keys=True))
    else:
        for r in results["table"]:
            print(f"{r['name']}: {pct(r['mean'])} ± {pct(r['std'])} %  (paper {pct(r['paper'])}, "
                  f"{r['n_test']:g} test clips)")
    return 0
