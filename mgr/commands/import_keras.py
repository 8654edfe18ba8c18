"""``mgr import-keras WEIGHTS.h5 MODEL_DIR``: bring a reference-code Keras Model 2 into mgr."""

from __future__ import annotations

import argparse
import sys

from mgr.commands import add_storage_options

__all__ = ["register", "run"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import-keras",
        help="convert a Keras 2 .h5 of the paper's Model 2 into an mgr model directory",
        description="Read a Keras 2 HDF5 file (whole model, or weights with the architecture file Keras "
        "wrote beside it), check it is the paper's Model 2 (Conv1D(256,4,stride 2)→ReLU→MaxPool(2) ×3, "
        "GAP ∥ GMP, Dropout, Dense(n), softmax) and write model.pt + model.json usable by "
        "`mgr label` and `mgr evaluate`. No TensorFlow needed.",
    )
    p.add_argument("weights", metavar="WEIGHTS.h5", help="Keras 2 .h5 file (local path or s3://)")
    p.add_argument("output", metavar="MODEL_DIR", help="model directory to write (local path or s3://)")
    p.add_argument("--genres", default=None,
                   help="genre names in the model's output order, comma-separated "
                   "(default for 10 classes: GTZAN's blues,classical,country,disco,hiphop,jazz,metal,pop,reggae,rock)")
    p.add_argument("--name", default=None, help="model name (default: the file name without .h5)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="architecture Keras wrote (model.to_json()/to_yaml()) for a weights-only file; "
                   "default: the file's own model_config, or WEIGHTS.keras.yaml/.yaml/.json beside it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    add_storage_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mgr.interop.keras.importer import import_keras

    spec = import_keras(args.weights, args.output, genres=args.genres, name=args.name, config_uri=args.config,
                        overwrite=args.overwrite, endpoint_url=args.endpoint_url)
    for warning in spec["warnings"]:
        print(f"mgr import-keras: warning: {warning}", file=sys.stderr)
    prov = spec["provenance"]
    print(f"imported {prov['source']} (Keras {prov['keras_version']}, {prov['backend']}; architecture from "
          f"{prov['architecture_from']}) as cnn/paper with {len(spec['genres'])} genres "
          f"[{', '.join(spec['genres'])}], window {spec['window_frames']} frames → {args.output}")
    return 0
