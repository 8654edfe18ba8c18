"""``mgr demo``: the whole pipeline on a generated collection, on the embedded local Ray."""

from __future__ import annotations

import argparse
import os


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole system on a generated collection (extract, train both models, evaluate, label)",
        description="Generate a labelled genre-like collection and a catalog of long songs, extract features, "
        "train the cnn and crnn models with Ray Train, evaluate both, label the catalog with the better one "
        "(and --music, a folder of real recordings), and write a summary and a genre timeline PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--workdir", default="demo-run", help="folder for everything the demo writes")
    p.add_argument("--music", default=None,
                   help="a folder of real recordings to label too (default: ../shared/data/music when present)")
    p.add_argument("--size", choices=["full", "quick"], default="full", help="quick: a tiny run of seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded local Ray")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mgr.experiments.demo import run_demo

    music = args.music
    if music is None:
        for cand in ("../shared/data/music", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "music")):
            if os.path.isdir(cand):
                music = os.path.abspath(cand)
                break
    run_demo(args.workdir, size=args.size, music=music, seed=args.seed, num_cpus=args.num_cpus)
    return 0
