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
        "(and --music, a folder of real recordings, also with the paper's GTZAN model when it is on this machine), "
        "and write a summary and a genre timeline PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--workdir", default="demo-run", help="folder for everything the demo writes")
    p.add_argument("--music", default=None,
                   help="a folder of real recordings to label too (default: ../shared/data/music when present)")
    p.add_argument("--weights", default=None, action="append", metavar="DIR",
                   help="a folder that may hold the paper's published GTZAN weights, to label --music with "
                   "the paper's model too (default: ../shared/data/weights when present; a pulled "
                   "paper-gtzan is always used)")
    p.add_argument("--size", choices=["full", "quick"], default="full", help="quick: a tiny run of seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded local Ray")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mgr.experiments.demo import run_demo

    music = args.music
    if music is None:
        music = next(iter(_shared("music")), None)
    weights = args.weights if args.weights is not None else _shared("weights")
    run_demo(args.workdir, size=args.size, music=music, seed=args.seed, num_cpus=args.num_cpus, weights_dirs=weights)
    return 0


def _shared(what: str) -> list[str]:
    """``../shared/data/<what>`` beside the working directory or the checkout, where present."""
    out = []
    for cand in (os.path.join("..", "shared", "data", what),
                 os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", what)):
        cand = os.path.abspath(cand)
        if os.path.isdir(cand) and cand not in out:
            out.append(cand)
    return out
