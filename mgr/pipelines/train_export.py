"""Turn the final training state into the model directory (no Ray needed).

Writes ``model.pt`` (the best weights by val accuracy), ``model.json``, ``metrics.jsonl``,
``report.json`` (test accuracy, per-genre precision/recall/F1, confusion matrix),
``learning_curves.png`` and ``confusion_matrix.png``.
"""

from __future__ import annotations

import json
from typing import Any

from mgr import __version__

from mgr.io import storage
from mgr.errors import ModelError
from mgr.audio.features import pad_value
from mgr.models.modeldir import write_bytes, now_iso, save_model_dir, write_json

__all__ = ["export"]


def export(state: dict, *, output_uri: str, features_uri: str, recipe, run: dict, model_config: dict, fcfg,
           endpoint_url: str | None = None, workers: int = 1, use_gpu: bool = False,
           verbose: bool = True) -> dict[str, Any]:
    """Write the model directory from ``state`` (a checkpoint's ``state.pt``); return the summary."""
    from mgr.reporting import plots
    from mgr.pipelines.evaluate import evaluate
    from mgr.models import build_model

    history = list(state["history"])
    if state.get("best_model") is None or not history:
        raise ModelError(f"the training state in {output_uri} holds no trained epoch")
    model = build_model(recipe.architecture, **model_config)
    model.load_state_dict(state["best_model"])
    best_epoch = int(state["best_epoch"]) + 1
    spec = {
        "name": f"{recipe.architecture}-{recipe.preset}",
        "architecture": recipe.architecture,
        "model_config": model_config,
        "feature_config": fcfg.to_dict(),
        "genres": run["genres"],
        "window_frames": recipe.window_frames,
        "pad_value": pad_value(fcfg),
        "normalization": run["normalization"],
        "metrics": {"best_epoch": best_epoch, "best_val_accuracy": float(state["best_val_accuracy"]),
                    "epochs_trained": len(history)},
        "provenance": {"features": features_uri, "recipe": recipe.to_dict(), "workers": workers,
                       "use_gpu": use_gpu, "early_stopped": bool(state.get("finished")),
                       "trainer": "ray.train.torch.TorchTrainer", "mgr_version": __version__},
        "created": now_iso(),
    }
    if recipe.architecture == "crnn":
        spec["average"] = model_config.get("average", "weighted")
    save_model_dir(output_uri, model=model, spec=spec, endpoint_url=endpoint_url)
    lines = "".join(json.dumps(h, sort_keys=True) + "\n" for h in history)
    write_bytes(storage.join(output_uri, "metrics.jsonl"), lines.encode(), endpoint_url=endpoint_url)
    title = f"{recipe.architecture}/{recipe.preset}"
    write_bytes(storage.join(output_uri, "learning_curves.png"), plots.learning_curves_png(history, title=title),
                 endpoint_url=endpoint_url)
    test = None
    try:
        test = evaluate(output_uri, features_uri, split="test", endpoint_url=endpoint_url)
    except ModelError as exc:
        if "no labeled, usable rows" not in str(exc):
            raise
    report = {"split": "test", "test": test, "val_accuracy": spec["metrics"]["best_val_accuracy"],
              "best_epoch": best_epoch, "model": spec["name"]}
    if test is not None:
        report.update(accuracy=test["accuracy"], per_genre=test["per_genre"], confusion=test["confusion"],
                      genres=test["genres"], model_id=test["model_id"])
        for key in ("accuracy_weighted", "accuracy_mean"):
            if key in test:
                report[key] = test[key]
        spec["metrics"]["test_accuracy"] = test["accuracy"]
        for key in ("accuracy_weighted", "accuracy_mean"):
            if key in test:
                spec["metrics"][f"test_{key}"] = test[key]
        write_json(storage.join(output_uri, "model.json"), {**spec, "mgr_version": __version__},
                   endpoint_url=endpoint_url)
        write_bytes(storage.join(output_uri, "confusion_matrix.png"),
                     plots.confusion_matrix_png(test["confusion"], test["genres"], title=f"{title} test"),
                     endpoint_url=endpoint_url)
    write_json(storage.join(output_uri, "report.json"), report, endpoint_url=endpoint_url)
    if verbose:
        acc = f"{test['accuracy']:.4f}" if test else "n/a (no test split)"
        print(f"mgr train: wrote {output_uri} (best epoch {best_epoch}, val accuracy "
              f"{spec['metrics']['best_val_accuracy']:.4f}, test accuracy {acc})", flush=True)
    return {
        "output": output_uri,
        "epochs_trained": len(history),
        "best_epoch": best_epoch,
        "best_val_accuracy": spec["metrics"]["best_val_accuracy"],
        "test": test,
        "test_accuracy": test["accuracy"] if test else None,
    }
