"""``mgr train FEATURES OUTPUT --model cnn|crnn``: data-parallel training on Ray Train."""

from __future__ import annotations

import argparse
import json

from mgr.commands import add_ray_options, add_storage_options


def register(sub) -> None:
    from mgr.training.engine import RECIPE_PRESETS
    from mgr.models import MODELS

    p = sub.add_parser(
        "train",
        help="train the paper's cnn or crnn on a features dataset with Ray Train",
        description="Train a model on the features dataset FEATURES (the OUTPUT of `mgr extract`) with "
        "data-parallel Ray Train workers and write the model directory OUTPUT (model.pt, model.json, "
        "metrics.jsonl, report.json, plots). A checkpoint is written every epoch under OUTPUT; re-running "
        "the same command on the same OUTPUT resumes from the latest one.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("features", metavar="FEATURES", help="features dataset (folder or s3:// prefix)")
    p.add_argument("output", metavar="OUTPUT", help="model directory to write (folder or s3:// prefix)")
    p.add_argument("--model", required=True, choices=sorted(MODELS), help="cnn: Model 2; crnn: Model 1")
    p.add_argument("--preset", default="mgr", choices=sorted(RECIPE_PRESETS),
                   help="paper: train as the paper (whole clips, Adam 1e-4 batch 256 / RMSprop 1e-5 batch 64); "
                   "mgr: random crops, crop voting, AdamW + cosine schedule, label smoothing")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (DDP replicas)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker, mixed precision")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (preset default: paper 100, mgr 60)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size, split across workers")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (preset default)")
    p.add_argument("--crop-seconds", type=float, default=None,
                   help="train on random crops of this length and vote over windows at test time "
                   "(mgr default 5 s; paper: whole clips)")
    p.add_argument("--average", choices=["weighted", "mean"], default="weighted",
                   help="crnn: time-weighted (w_t = t) or plain mean of the per-step distributions")
    p.add_argument("--patience", type=int, default=None, help="early stopping: epochs without a better val accuracy")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--split-seed", type=int, default=None,
                   help="train on another split of the same features: the extraction's split rule with this "
                   "seed, computed per row on the fly (no copy); default: the stored split")
    p.add_argument("--split-manifest", default=None, metavar="FILE",
                   help="train on the splits of this CSV/Parquet manifest's `split` column (train/val/test; "
                   "rows found by `uri` and/or `track_id`; rows it does not name are left out), no copy")
    p.add_argument("--max-failures", type=int, default=3, help="worker failures to recover from (from the last checkpoint)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_ray_options(p)
    add_storage_options(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The :class:`~mgr.pipelines.train_config.TrainJobConfig` of ``mgr train`` arguments."""
    from mgr.io.location import Location
    from mgr.pipelines.train_config import TrainJobConfig

    return TrainJobConfig(
        features=Location(args.features, endpoint_url=args.endpoint_url, retries=args.s3_retries),
        output=Location(args.output, endpoint_url=args.endpoint_url, retries=args.s3_retries),
        model=args.model,
        preset=args.preset,
        workers=args.workers,
        use_gpu=args.gpu,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        crop_seconds=args.crop_seconds,
        average=args.average,
        patience=args.patience,
        seed=args.seed,
        split_seed=args.split_seed,
        split_manifest=args.split_manifest,
        max_failures=args.max_failures,
        address=args.address,
        num_cpus=args.num_cpus,
    )


def run(args: argparse.Namespace) -> int:
    from mgr.pipelines.train import train

    summary = train(config_from_args(args))
    if args.json:
        print(json.dumps({k: v for k, v in summary.items() if k != "test"}
                         | {"test_accuracy": summary["test_accuracy"]}, sort_keys=True))
    return 0
