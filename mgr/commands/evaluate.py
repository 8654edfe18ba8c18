"""``mgr evaluate MODEL FEATURES``: accuracy, per-genre scores and confusion matrix."""

from __future__ import annotations

import argparse
import json

from mgr.commands import add_ray_options, add_storage_options


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model directory on a split of a features dataset",
        description="Score the model directory MODEL on the labeled rows of one split of FEATURES: windows "
        "of the model's input length every half window, a track's distribution is the mean of its "
        "windows'. A crnn is scored with the time-weighted and the plain-mean step average side by side.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL",
                   help="model directory (folder or s3:// prefix) or a pulled model's name (mgr models list)")
    p.add_argument("features", metavar="FEATURES", help="features dataset (folder or s3:// prefix)")
    p.add_argument("--split", default="test", help="split to score (train, val or test)")
    p.add_argument("--hop-seconds", type=float, default=None, help="window hop (default: half a window)")
    p.add_argument("--gpu", action="store_true", help="run the model on the GPU when there is one")
    p.add_argument("--split-seed", type=int, default=None,
                   help="score the split the extraction's rule gives with this seed (as `mgr train --split-seed`)")
    p.add_argument("--split-manifest", default=None, metavar="FILE",
                   help="score the split a manifest's `split` column gives (as `mgr train --split-manifest`)")
    p.add_argument("--workers", type=int, default=2, help="scoring workers (Ray actors, a GPU each with --gpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object (with `accuracy`)")
    add_ray_options(p)
    add_storage_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mgr.pipelines.evaluate import evaluate, format_report
    from mgr.registry import resolve_model

    result = evaluate(resolve_model(args.model), args.features, split=args.split, hop_seconds=args.hop_seconds,
                      use_gpu=args.gpu, endpoint_url=args.endpoint_url, split_seed=args.split_seed,
                      split_manifest=args.split_manifest, workers=args.workers, address=args.address,
                      num_cpus=args.num_cpus)
    print(json.dumps(result, sort_keys=True) if args.json else format_report(result))
    return 0
