"""Turn the final training state into the model directory, calibrated and scored.

Steps: write ``model.pt`` (the best weights by val accuracy), ``model.json``,
``metrics.jsonl`` and ``learning_curves.png``; fit the temperature on the val split
(calibration sums from each scoring worker, merged, :func:`fit_temperature`) and store it
in ``model.json``; score the test split with it (:func:`mgr.pipelines.evaluate.evaluate`)
and write ``report.json`` (test accuracy, per-genre precision/recall/F1, confusion matrix,
``calibration``: temperature, ECE before/after, accuracy-vs-coverage, reliability) and
``confusion_matrix.png``. Evaluation runs on Ray workers (the caller's Ray session).
"""

from __future__ import annotations

import json
from typing import Any

from mgr import __version__
from mgr.audio.features import pad_value
from mgr.datasets.featureset import feature_config
from mgr.errors import ModelError
from mgr.inference.calibration import coverage_table, expected_calibration_error, fit_temperature, reliability
from mgr.models.modeldir import now_iso, save_model_dir

__all__ = ["export", "calibration_report"]


def export(state: dict, *, plan) -> dict[str, Any]:
    """Write the model directory from ``state`` (a checkpoint's ``state.pt``); return the summary.

    ``plan`` is the :class:`mgr.pipelines.train.Plan` of the run.
    """
    c = plan.config
    history = list(state["history"])
    if state.get("best_model") is None or not history:
        raise ModelError(f"the training state in {c.output.uri} holds no trained epoch")
    spec = _write_model(state, plan=plan, history=history)
    temperature = _fit_temperature(plan)
    spec["temperature"] = temperature
    spec["metrics"]["temperature"] = temperature
    c.output.join("model.json").write_json({**spec, "mgr_version": __version__})
    test = _score_test(plan, temperature=temperature) if plan.counts.get("test") else None
    report = {"split": "test", "test": test, "val_accuracy": spec["metrics"]["best_val_accuracy"],
              "best_epoch": spec["metrics"]["best_epoch"], "model": spec["name"], "temperature": temperature}
    if test is not None:
        _add_test(report, spec, test, plan=plan)
    c.output.join("report.json").write_json(report)
    from mgr.reporting.model_report import write_model_report

    write_model_report(c.output)  # report.html (curves, confusion, per-genre F1, calibration) + calibration.png
    if c.verbose:
        acc = f"{test['accuracy']:.4f}" if test else "n/a (no test split)"
        print(f"mgr train: wrote {c.output.uri} (best epoch {spec['metrics']['best_epoch']}, val accuracy "
              f"{spec['metrics']['best_val_accuracy']:.4f}, test accuracy {acc}, temperature {temperature:.3g})",
              flush=True)
    return {
        "output": c.output.uri,
        "epochs_trained": len(history),
        "best_epoch": spec["metrics"]["best_epoch"],
        "best_val_accuracy": spec["metrics"]["best_val_accuracy"],
        "test": test,
        "test_accuracy": test["accuracy"] if test else None,
        "temperature": temperature,
    }


def _write_model(state: dict, *, plan, history: list) -> dict:
    """``model.pt``, ``model.json`` (uncalibrated), ``metrics.jsonl``, ``learning_curves.png``."""
    from mgr.models import build_model
    from mgr.reporting import plots

    c, recipe = plan.config, plan.recipe
    fcfg = feature_config(plan.manifest)
    model = build_model(recipe.architecture, **plan.model_config)
    model.load_state_dict(state["best_model"])
    spec = {
        "name": f"{recipe.architecture}-{recipe.preset}",
        "architecture": recipe.architecture,
        "model_config": plan.model_config,
        "feature_config": fcfg.to_dict(),
        "genres": plan.genres,
        "window_frames": recipe.window_frames,
        "pad_value": pad_value(fcfg),
        "normalization": plan.run["normalization"],
        "temperature": 1.0,
        "metrics": {"best_epoch": int(state["best_epoch"]) + 1, "best_val_accuracy": float(state["best_val_accuracy"]),
                    "epochs_trained": len(history)},
        "provenance": {"features": c.features.uri, "recipe": recipe.to_dict(), "workers": c.workers,
                       "use_gpu": c.use_gpu, "early_stopped": bool(state.get("finished")),
                       "split": plan.rule.to_dict() if plan.rule else None,
                       "trainer": "ray.train.torch.TorchTrainer", "mgr_version": __version__},
        "created": now_iso(),
    }
    if recipe.architecture == "crnn":
        spec["average"] = plan.model_config.get("average", "weighted")
    save_model_dir(c.output, model=model, spec=spec)
    lines = "".join(json.dumps(h, sort_keys=True) + "\n" for h in history)
    c.output.join("metrics.jsonl").write_bytes(lines.encode())
    title = f"{recipe.architecture}/{recipe.preset}"
    c.output.join("learning_curves.png").write_bytes(plots.learning_curves_png(history, title=title))
    return spec


def _fit_temperature(plan) -> float:
    """The temperature of least NLL on the val split (sums merged over the scoring workers)."""
    from mgr.pipelines.evaluate import score_split

    c = plan.config
    sums = score_split(c.output, c.features, split="val", temperatures=(1.0,), rule=plan.rule,
                       workers=c.workers, use_gpu=c.use_gpu, expected=plan.counts["val"])
    return fit_temperature(sums["calibration"])


def _score_test(plan, *, temperature: float) -> dict:
    from mgr.pipelines.evaluate import evaluate

    c = plan.config
    return evaluate(c.output, c.features, split="test", rule=plan.rule, workers=c.workers, use_gpu=c.use_gpu,
                    temperatures=tuple(sorted({1.0, temperature})), expected=plan.counts["test"])


def calibration_report(sums, *, temperature: float) -> dict:
    """``report.json`` ``calibration`` from the test split's sums (histograms at 1 and ``temperature``)."""
    before, after = sums.hist[1.0], sums.hist[float(temperature)]
    return {"temperature": float(temperature), "n": int(sums.n),
            "ece_before": expected_calibration_error(before), "ece_after": expected_calibration_error(after),
            "coverage": coverage_table(after), "reliability_before": reliability(before),
            "reliability_after": reliability(after)}


def _add_test(report: dict, spec: dict, test: dict, *, plan) -> None:
    from mgr.reporting import plots

    c, recipe = plan.config, plan.recipe
    sums = test.pop("calibration_sums")
    report["calibration"] = calibration_report(sums, temperature=spec["temperature"])
    report.update(accuracy=test["accuracy"], per_genre=test["per_genre"], confusion=test["confusion"],
                  genres=test["genres"], model_id=test["model_id"], loss=test["loss"])
    spec["metrics"]["test_accuracy"] = test["accuracy"]
    spec["metrics"]["test_ece"] = report["calibration"]["ece_after"]
    for key in ("accuracy_weighted", "accuracy_mean"):
        if key in test:
            report[key] = test[key]
            spec["metrics"][f"test_{key}"] = test[key]
    c.output.join("model.json").write_json({**spec, "mgr_version": __version__})
    title = f"{recipe.architecture}/{recipe.preset}"
    c.output.join("confusion_matrix.png").write_bytes(
        plots.confusion_matrix_png(test["confusion"], test["genres"], title=f"{title} test"))
