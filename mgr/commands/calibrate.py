"""``mgr calibrate MODEL FEATURES OUTPUT_MODEL``: the command line of :mod:`mgr.pipelines.calibrate`."""

from __future__ import annotations

import argparse
import json

from mgr.commands import add_ray_options, add_storage_options


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a confidence temperature on a features split; write a calibrated copy of a model",
        description="Fit the temperature T that makes MODEL's confidences honest (p <- softmax(log p / T), "
        "least negative log-likelihood on --split of FEATURES), report the expected calibration error "
        "before/after and the accuracy-vs-coverage table on --report-split, and write OUTPUT_MODEL: a "
        "copy of MODEL with the temperature in model.json (a calibrated model has its own model id), "
        "report.json `calibration`, calibration.png and report.html. MODEL itself is never changed. "
        "Use the table to choose `mgr label --min-confidence` (or `--target-accuracy`).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="model directory (folder or s3:// prefix) or a pulled model's name")
    p.add_argument("features", metavar="FEATURES", help="features dataset with labelled rows (mgr extract)")
    p.add_argument("output", metavar="OUTPUT_MODEL", help="new model directory to write (must not exist, or be empty)")
    p.add_argument("--split", default="val", help="split the temperature is fitted on")
    p.add_argument("--report-split", default="test",
                   help="split the calibration is reported on (the fit split when it has no labelled rows)")
    p.add_argument("--workers", type=int, default=2, help="scoring workers (Ray actors)")
    p.add_argument("--gpu", action="store_true", help="run the model on the GPU when there is one")
    p.add_argument("--json", action="store_true", help="print one JSON object (temperature, ECE before/after)")
    add_ray_options(p)
    add_storage_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mgr.pipelines.calibrate import calibrate
    from mgr.registry import resolve_model

    res = calibrate(resolve_model(args.model), args.features, args.output, split=args.split,
                    report_split=args.report_split, workers=args.workers, use_gpu=args.gpu,
                    endpoint_url=args.endpoint_url, address=args.address, num_cpus=args.num_cpus)
    if args.json:
        print(json.dumps(res, sort_keys=True))
        return 0
    print(f"mgr calibrate: wrote {res['output']} (model id {res['model_id']})")
    print(f"temperature {res['temperature']:.3g} fitted on {res['fitted_on']['n']} {res['fitted_on']['split']} tracks; "
          f"expected calibration error on {res['split']}: {res['ece_before']:.3f} -> {res['ece_after']:.3f}")
    print("--min-confidence  kept   accuracy of the kept")
    for row in res["coverage"][::2]:
        acc = "   –" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        print(f"  {row['threshold']:>14.2f}  {100 * row['coverage']:5.1f} %  {acc}")
    print(f"report: {res['output'].rstrip('/')}/report.html")
    return 0
