"""Evaluation of a model directory on a split of a features dataset (no Ray needed).

Tracks are scored by window voting as DESIGN.md fixes it: windows of W frames (the
model's input length) every H = W/2 frames, the track's distribution is the mean of its
windows'. A crnn is scored with both step averages side by side (weighted and mean).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mgr.inference.predict import predict_tracks, window_geometry
from mgr.training.engine import classification_metrics, device_for
from mgr.errors import ModelError
from mgr.datasets.featureset import feature_config, read_manifest, read_table, to_arrays
from mgr.models.modeldir import LoadedModel, load_model_dir

__all__ = ["evaluate", "check_compatible", "format_report"]

#: feature settings that must agree between a model and the features it reads
ANALYSIS_KEYS = ("preset", "sr", "mono", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "power", "floor")


def check_compatible(loaded: LoadedModel, manifest: dict, *, features_uri: str, labels=()) -> None:
    """Raise :class:`ModelError` when features and model disagree (preset or vocabulary)."""
    theirs = feature_config(manifest).to_dict()
    ours = loaded.feature_config.to_dict()
    diff = [k for k in ANALYSIS_KEYS if theirs.get(k) != ours.get(k)]
    if diff:
        detail = ", ".join(f"{k} {theirs.get(k)!r} vs {ours.get(k)!r}" for k in diff)
        raise ModelError(
            f"features in {features_uri} were extracted with preset {theirs.get('preset')!r} but the model "
            f"expects {ours.get('preset')!r} ({detail}); re-extract with --preset {ours.get('preset')}")
    unknown = sorted({lab for lab in labels if lab is not None and lab not in loaded.genres})
    if unknown:
        raise ModelError(f"features in {features_uri} have genres {unknown} that the model does not know "
                         f"(its vocabulary: {loaded.genres})")


def evaluate(model_dir: str, features_uri: str, *, split: str = "test", hop_seconds: float | None = None,
             batch_size: int = 64, use_gpu: bool = False, endpoint_url: str | None = None,
             loaded: LoadedModel | None = None) -> dict[str, Any]:
    """Score a model directory on the labeled rows of ``split``.

    Returns
    -------
    dict
        ``accuracy``, ``n``, ``per_genre`` ({genre: precision/recall/f1/support}),
        ``confusion`` (rows true, columns predicted), ``genres``, ``model_id``, ``split``,
        ``window_frames``, ``hop_frames``; for a crnn also ``accuracy_weighted``,
        ``accuracy_mean`` and ``average`` (the mode ``accuracy`` is for).
    """
    device = device_for(use_gpu)
    loaded = loaded or load_model_dir(model_dir, device=str(device), endpoint_url=endpoint_url)
    manifest = read_manifest(features_uri, endpoint_url=endpoint_url)
    table = read_table(features_uri, columns=["label", "n_mels", "n_frames", "mel"], splits=[split],
                       ok_only=True, endpoint_url=endpoint_url)
    labels = table.column("label").to_pylist()
    check_compatible(loaded, manifest, features_uri=features_uri, labels=labels)
    keep = [i for i, lab in enumerate(labels) if lab is not None]
    if not keep:
        raise ModelError(f"{features_uri} has no labeled, usable rows in split {split!r}")
    table = table.take(keep)
    index = {g: i for i, g in enumerate(loaded.genres)}
    y = np.array([index[lab] for lab in table.column("label").to_pylist()])
    mels = to_arrays(table)
    fc = loaded.feature_config
    width, hop = window_geometry(window_frames=loaded.window_frames, frames_per_second=fc.sr / fc.hop_length,
                                 hop_seconds=hop_seconds)
    model = loaded.model

    def scores() -> dict:
        probs = predict_tracks(model, mels, width=width, hop=hop, pad=loaded.pad_value, mean=loaded.mean,
                               std=loaded.std, device=device, batch_size=batch_size)
        return classification_metrics(y, probs.argmax(1), genres=loaded.genres)

    out: dict[str, Any] = {}
    if loaded.spec["architecture"] == "crnn":
        mode = model.average
        both = {}
        for avg in ("weighted", "mean"):
            model.average = avg
            both[avg] = scores()
        model.average = mode
        out.update(both[mode])
        out.update(average=mode, accuracy_weighted=both["weighted"]["accuracy"],
                   accuracy_mean=both["mean"]["accuracy"])
    else:
        out.update(scores())
    out.update(model_id=loaded.model_id, split=split, window_frames=width, hop_frames=hop)
    return out


def format_report(result: dict) -> str:
    """Human-readable accuracy, per-genre table and confusion matrix."""
    lines = [f"model {result['model_id']}  split {result['split']}  tracks {result['n']}  "
             f"windows {result['window_frames']} frames, hop {result['hop_frames']}"]
    if "accuracy_weighted" in result:
        lines.append(f"accuracy {result['accuracy']:.4f} ({result['average']})   "
                     f"weighted {result['accuracy_weighted']:.4f}   mean {result['accuracy_mean']:.4f}")
    else:
        lines.append(f"accuracy {result['accuracy']:.4f}")
    genres = result["genres"]
    w = max(8, max(len(g) for g in genres))
    lines.append("")
    lines.append(f"{'genre':<{w}}  precision  recall     f1  support")
    for g in genres:
        s = result["per_genre"][g]
        lines.append(f"{g:<{w}}  {s['precision']:9.3f}  {s['recall']:6.3f}  {s['f1']:5.3f}  {s['support']:7d}")
    lines.append("")
    lines.append("confusion (rows true, columns predicted)")
    short = [g[:6] for g in genres]
    lines.append(" " * w + "  " + " ".join(f"{s:>6}" for s in short))
    for g, row in zip(genres, result["confusion"]):
        lines.append(f"{g:<{w}}  " + " ".join(f"{v:>6d}" for v in row))
    return "\n".join(lines)
