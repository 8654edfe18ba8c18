"""``mgr calibrate MODEL FEATURES OUTPUT_MODEL``: fit a temperature, write a calibrated copy of a model.

The temperature T (p ← softmax(log p / T) on each track's distribution) is fitted on one
split of a features dataset (``val`` by default) by least negative log-likelihood, and the
calibration is reported on another (``test``; the fit split when there is none). MODEL is
never changed (it may be a cached registry model): OUTPUT_MODEL is a new model directory,
a copy of MODEL with ``temperature`` in model.json, ``calibration`` in report.json, and
``calibration.png`` and ``report.html`` beside them.
"""

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


def _calibration_report(sums, *, temperature: float, split: str) -> dict:
    """report.json ``calibration`` (as training writes it), plus the split it was measured on."""
    from mgr.pipelines.train_export import calibration_report

    return {**calibration_report(sums, temperature=temperature), "split": split}


def calibrate(model, features, output, *, split: str = "val", report_split: str = "test", workers: int = 2,
              use_gpu: bool = False, endpoint_url: str | None = None, address: str | None = None,
              num_cpus: int | None = None) -> dict:
    """Fit T on ``split``, report on ``report_split``, write the calibrated copy; return the calibration."""
    from mgr.errors import ConfigError, ModelError
    from mgr.inference.calibration import fit_temperature
    from mgr.io.location import Location
    from mgr.models.modeldir import load_model_dir, now_iso
    from mgr.pipelines.evaluate import split_calibration_sums
    from mgr.pipelines.runtime import ray_session
    from mgr.reporting.model_report import write_model_report

    src = Location.of(model, endpoint_url=endpoint_url)
    dest = Location.of(output, endpoint_url=endpoint_url)
    if dest.uri.rstrip("/") == src.uri.rstrip("/"):
        raise ConfigError("mgr calibrate writes a new model directory: OUTPUT_MODEL must differ from MODEL")
    if dest.exists() and (not dest.isdir() or dest.files()):
        raise ConfigError(f"{dest.uri} exists and is not empty: choose a new OUTPUT_MODEL")
    loaded = load_model_dir(src)
    kwargs = {"workers": workers, "use_gpu": use_gpu, "endpoint_url": endpoint_url}
    with ray_session(address=address, num_cpus=num_cpus, endpoint_url=endpoint_url):
        fit = split_calibration_sums(src, features, split=split, temperatures=(1.0,), **kwargs)
        t = fit_temperature(fit)
        shown = report_split
        try:
            sums = split_calibration_sums(src, features, split=report_split, temperatures=(1.0, t), **kwargs)
        except ModelError as exc:
            if "no labeled, usable rows" not in str(exc):
                raise
            shown = split
            sums = split_calibration_sums(src, features, split=split, temperatures=(1.0, t), **kwargs)
    cal = _calibration_report(sums, temperature=t, split=shown)
    cal["fitted_on"] = {"split": split, "n": int(fit.n), "features": Location.of(features, endpoint_url=endpoint_url).uri}
    base = src.path.rstrip("/") + "/"
    for path in src.files():
        rel = path[len(base):] if path.startswith(base) else path.rsplit("/", 1)[-1]
        if rel in ("report.html", "calibration.png") or rel.rsplit("/", 1)[-1].startswith("."):
            continue
        dest.join(*rel.split("/")).write_bytes(Location(src.child_uri(path), endpoint_url=endpoint_url).read_bytes())
    spec = src.join("model.json").read_json()
    spec["temperature"] = t
    prov = spec.setdefault("provenance", {})
    prov["calibrated_from"] = loaded.model_id
    prov["calibrated"] = now_iso()
    metrics = spec.setdefault("metrics", {})
    metrics[f"{shown}_ece"] = cal["ece_after"]
    metrics[f"{shown}_ece_uncalibrated"] = cal["ece_before"]
    dest.join("model.json").write_json(spec)
    rep_loc = src.join("report.json")
    report = rep_loc.read_json() if rep_loc.exists() else {}
    report["calibration"] = cal
    dest.join("report.json").write_json(report)
    write_model_report(dest)
    return {"output": dest.uri, "model_id": load_model_dir(dest).model_id, "temperature": t,
            "ece_before": cal["ece_before"], "ece_after": cal["ece_after"], "split": shown,
            "fitted_on": cal["fitted_on"], "coverage": cal["coverage"]}


def run(args: argparse.Namespace) -> int:
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


def min_confidence_for(model: str, target: float, *, endpoint_url: str | None = None) -> float:
    """The ``--min-confidence`` that ``--target-accuracy target`` means for ``model``.

    The lowest threshold of the model's accuracy-vs-coverage table (report.json
    ``calibration.coverage``, measured at the model's temperature) whose kept tracks reach
    ``target`` accuracy; a line on stderr says what it keeps.

    Raises
    ------
    ConfigError
        The model has no table (never calibrated), or no threshold reaches ``target``.
    """
    import sys

    from mgr.errors import ConfigError
    from mgr.inference.calibration import threshold_for_accuracy
    from mgr.io.location import Location
    from mgr.registry import resolve_model

    loc = Location.of(resolve_model(model), endpoint_url=endpoint_url)
    rep = loc.join("report.json")
    cal = (rep.read_json() if rep.exists() else {}).get("calibration") or {}
    table = cal.get("coverage")
    if not table:
        raise ConfigError(f"--target-accuracy needs the model's accuracy-vs-coverage table, and {loc.uri} has none "
                          "(report.json `calibration`): run `mgr calibrate MODEL FEATURES NEW_MODEL` and label with "
                          "NEW_MODEL, or choose --min-confidence yourself")
    threshold = threshold_for_accuracy(table, float(target))
    if threshold is None:
        best = max((r for r in table if r.get("accuracy") is not None), key=lambda r: r["accuracy"], default=None)
        extra = f" (the best is {best['accuracy']:.3f} above {best['threshold']:g})" if best else ""
        raise ConfigError(f"no confidence threshold reaches accuracy {target} on the {cal.get('split', 'test')} split "
                          f"of {loc.uri}{extra}: lower --target-accuracy")
    row = next(r for r in table if r["threshold"] == threshold)
    print(f"mgr: --target-accuracy {target}: --min-confidence {threshold:g} (on the {cal.get('split', 'test')} split "
          f"it keeps {100 * row['coverage']:.1f} % of the tracks, {100 * row['accuracy']:.1f} % of them right)",
          file=sys.stderr)
    return threshold
