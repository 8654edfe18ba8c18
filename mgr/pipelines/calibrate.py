"""Calibrating a model directory: fit a temperature on one split, write a calibrated copy.

The temperature T (p ← softmax(log p / T) on each track's distribution) is fitted on one
split of a features dataset (``val`` by default) by least negative log-likelihood, and the
calibration is reported on another (``test``; the fit split when there is none). MODEL is
never changed (it may be a cached registry model): OUTPUT_MODEL is a new model directory,
a copy of MODEL with ``temperature`` in model.json, ``calibration`` in report.json, and
``calibration.png`` and ``report.html`` beside them. :func:`min_confidence_for` reads the
accuracy-vs-coverage table back for ``mgr label --target-accuracy``.
"""

from __future__ import annotations

import sys

from mgr.datasets.featureset import read_manifest
from mgr.errors import ConfigError, ModelError
from mgr.inference.calibration import fit_temperature, threshold_for_accuracy
from mgr.io.location import Location
from mgr.models.modeldir import load_model_dir, now_iso
from mgr.pipelines.evaluate import check_compatible, score_split
from mgr.pipelines.train_export import calibration_report
from mgr.reporting.model_report import write_model_report

__all__ = ["calibrate", "min_confidence_for"]


def calibrate(model: Location | str, features: Location | str, output: Location | str, *, split: str = "val",
              report_split: str = "test", workers: int = 2, use_gpu: bool = False, endpoint_url: str | None = None,
              address: str | None = None, num_cpus: int | None = None) -> dict:
    """Fit T on ``split``, report on ``report_split``, write the calibrated copy; return the calibration.

    One counting pass finds the labelled rows of both splits; each split is then scored once
    (``report_split`` falls back to ``split`` when it has no labelled rows).

    Raises
    ------
    ConfigError
        OUTPUT_MODEL is MODEL, or exists and is not empty.
    ModelError
        ``split`` has no labelled rows, or its labels are not the model's genres.
    """
    from mgr.pipelines.runtime import ray_session
    from mgr.pipelines.train_data import split_summary

    src = Location.of(model, endpoint_url=endpoint_url)
    dest = Location.of(output, endpoint_url=endpoint_url)
    feats = Location.of(features, endpoint_url=endpoint_url)
    if dest.uri.rstrip("/") == src.uri.rstrip("/"):
        raise ConfigError("mgr calibrate writes a new model directory: OUTPUT_MODEL must differ from MODEL")
    if dest.exists() and (not dest.isdir() or dest.files()):
        raise ConfigError(f"{dest.uri} exists and is not empty: choose a new OUTPUT_MODEL")
    loaded = load_model_dir(src)
    manifest = read_manifest(feats)
    kwargs = {"workers": workers, "use_gpu": use_gpu, "loaded": loaded}
    with ray_session(address=address, num_cpus=num_cpus, endpoint_url=endpoint_url):
        counts = split_summary(feats)["counts"]
        n = {s: sum(counts.get(s, {}).values()) for s in (split, report_split)}
        if not n[split]:
            raise ModelError(f"{feats.uri} has no labeled, usable rows in split {split!r}")
        shown = report_split if n[report_split] else split
        for s in {split, shown}:
            check_compatible(loaded, manifest, features_uri=feats.uri, labels=list(counts[s]))
        fit = score_split(src, feats, split=split, temperatures=(1.0,), expected=n[split], **kwargs)["calibration"]
        t = fit_temperature(fit)
        sums = score_split(src, feats, split=shown, temperatures=(1.0, t), expected=n[shown],
                           **kwargs)["calibration"]
    cal = {**calibration_report(sums, temperature=t), "split": shown,
           "fitted_on": {"split": split, "n": int(fit.n), "features": feats.uri}}
    _copy_model(src, dest)
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


def _copy_model(src: Location, dest: Location) -> None:
    """Every file of a model directory but its rendered report (written anew)."""
    base = src.path.rstrip("/") + "/"
    for path in src.files():
        rel = path[len(base):] if path.startswith(base) else path.rsplit("/", 1)[-1]
        if rel in ("report.html", "calibration.png") or rel.rsplit("/", 1)[-1].startswith("."):
            continue
        dest.join(*rel.split("/")).write_bytes(Location(src.child_uri(path), endpoint_url=src.endpoint_url).read_bytes())


def min_confidence_for(model: Location | str, target: float, *, endpoint_url: str | None = None) -> float:
    """The ``--min-confidence`` that ``--target-accuracy target`` means for ``model``.

    The lowest threshold of the model's accuracy-vs-coverage table (report.json
    ``calibration.coverage``, measured at the model's temperature) whose kept tracks reach
    ``target`` accuracy; a line on stderr says what it keeps.

    Raises
    ------
    ConfigError
        The model has no table (never calibrated), or no threshold reaches ``target``.
    """
    loc = Location.of(model, endpoint_url=endpoint_url)
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
