"""Evaluation of a model directory on a split of a features dataset, scored on Ray workers.

Tracks are scored by window voting as DESIGN.md fixes it (windows of W frames every
H = W/2, a track's distribution is the mean of its windows', see
:func:`mgr.inference.predict.predict_tracks`), then calibrated with the model's temperature.
The split streams from storage through Ray Data into scoring tasks (the model loaded once
per worker process); each block of tracks yields its sums (confusion matrices, the loss, the
calibration sums of :mod:`mgr.inference.calibration`) and the driver adds them up as they
come, so nothing per track reaches it. Every labelled row of the split is scored exactly
once (a map over the dataset, and a check of the count). A crnn is scored with both step
averages side by side (weighted and mean).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from mgr.datasets.featureset import decode_mels, feature_config, read_manifest
from mgr.datasets.sources.split import ManifestSplit, SplitRule
from mgr.errors import JobError, ModelError
from mgr.inference.calibration import (CalibrationSums, apply_temperature, calibration_sums,
                                       expected_calibration_error)
from mgr.inference.predict import predict_tracks, window_geometry
from mgr.io.location import Location
from mgr.models.modeldir import LoadedModel, load_model_dir
from mgr.training.engine import metrics_from_confusion

__all__ = ["SCORE_CPUS", "evaluate", "score_split", "check_compatible",
           "format_report"]

#: feature settings that must agree between a model and the features it reads
ANALYSIS_KEYS = ("preset", "sr", "mono", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "power", "floor")
#: CPUs of a scoring task on CPU (fractional, like the ingest it is fused with)
SCORE_CPUS = 0.5


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


#: models loaded by this worker process, by model_id (scoring tasks reuse them)
_MODELS: dict = {}


def _model_for(model: Location, model_id: str, use_gpu: bool) -> LoadedModel:
    from mgr.training.engine import device_for

    key = (model.uri, model_id, use_gpu)
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = load_model_dir(model, device=str(device_for(use_gpu)))
    return _MODELS[key]


def _score_block(batch, *, model: Location, model_id: str, width: int, hop: int, temperatures: Sequence[float],
                 use_gpu: bool, batch_size: int) -> dict:
    """Scoring task: a block of whole tracks in, one row of sums out (JSON).

    A task rather than an actor: it runs in the warm worker processes of the ingest, and the
    model is loaded once per process (:func:`_model_for`).
    """
    loaded = _model_for(model, model_id, use_gpu)
    net = loaded.model
    device = next(net.parameters()).device
    crnn = loaded.spec["architecture"] == "crnn"
    mode = net.average if crnn else None
    index = {g: i for i, g in enumerate(loaded.genres)}
    mels = decode_mels(batch.column("mel"), batch.column("n_mels"), batch.column("n_frames"))
    y = np.array([index[lab] for lab in batch.column("label").to_pylist()], dtype=np.int64)
    k = len(loaded.genres)
    out: dict = {"n": int(len(y)), "confusion": {}}
    try:
        for avg in (("weighted", "mean") if crnn else (None,)):
            if avg is not None:
                net.average = avg
            probs = predict_tracks(net, mels, width=width, hop=hop, pad=loaded.pad_value, mean=loaded.mean,
                                   std=loaded.std, device=device, batch_size=batch_size)
            conf = np.zeros((k, k), dtype=np.int64)
            np.add.at(conf, (y, probs.argmax(1)), 1)
            out["confusion"][str(avg)] = conf.tolist()
            if avg == mode:
                calibrated = apply_temperature(probs, loaded.temperature)
                out["loss_sum"] = float(-np.log(np.clip(calibrated[np.arange(len(y)), y], 1e-12, None)).sum())
                out["calibration"] = calibration_sums(probs, y, temperatures=temperatures).to_dict()
    finally:
        if crnn:
            net.average = mode
    return {"sums": np.array([json.dumps(out)])}


def _merge(total: dict | None, part: dict) -> dict:
    if total is None:
        part["calibration"] = CalibrationSums.from_dict(part["calibration"])
        part["confusion"] = {a: np.asarray(c) for a, c in part["confusion"].items()}
        return part
    total["n"] += part["n"]
    total["loss_sum"] += part["loss_sum"]
    total["calibration"] = total["calibration"].merge(CalibrationSums.from_dict(part["calibration"]))
    for a, c in part["confusion"].items():
        total["confusion"][a] = total["confusion"][a] + np.asarray(c)
    return total


def score_split(model: Location | str, features: Location | str, *, split: str = "test",
                hop_seconds: float | None = None, temperatures: Sequence[float] | None = None,
                rule: SplitRule | ManifestSplit | None = None, workers: int = 2, use_gpu: bool = False, batch_size: int = 64,
                endpoint_url: str | None = None, loaded: LoadedModel | None = None,
                expected: int | None = None) -> dict[str, Any]:
    """Score the labelled rows of ``split`` on Ray workers; return the merged sums.

    Parameters
    ----------
    model, features : Location or str
        Model directory and features dataset (a str takes ``endpoint_url``).
    temperatures : sequence of float, optional
        Temperatures at which confidence histograms are kept (default: 1 and the model's).
    rule : SplitRule, optional
        Compute the split per row instead of reading the stored column.
    workers : int
        Scoring tasks at a time (one GPU each with ``use_gpu``).
    expected : int, optional
        The number of labelled rows of ``split`` when the caller knows it (and knows its
        labels are in the model's vocabulary, as after training); else one counting pass
        finds it first.

    Returns
    -------
    dict
        ``n``, ``confusion`` ({average: ``[k, k]`` array}; key ``"None"`` for a cnn),
        ``loss_sum`` (cross-entropy of the calibrated track distributions, summed),
        ``calibration`` (:class:`~mgr.inference.calibration.CalibrationSums` of the
        uncalibrated distributions), ``loaded``, ``width``, ``hop``.
    """
    import ray.data

    from mgr.pipelines.train_data import read_split, split_summary

    model, features = Location.of(model, endpoint_url=endpoint_url), Location.of(features, endpoint_url=endpoint_url)
    loaded = loaded or load_model_dir(model)
    manifest = read_manifest(features)
    check_compatible(loaded, manifest, features_uri=features.uri)
    if expected is None:
        labels = split_summary(features, rule=rule)["counts"].get(split, {})
        check_compatible(loaded, manifest, features_uri=features.uri, labels=list(labels))
        expected = sum(labels.values())
    if expected == 0:
        raise ModelError(f"{features.uri} has no labeled, usable rows in split {split!r}")
    fc = loaded.feature_config
    width, hop = window_geometry(window_frames=loaded.window_frames, frames_per_second=fc.sr / fc.hop_length,
                                 hop_seconds=hop_seconds)
    temps = tuple(temperatures) if temperatures is not None else tuple(sorted({1.0, loaded.temperature}))
    resources = {"num_gpus": 1} if use_gpu else {"num_cpus": SCORE_CPUS}
    ds = read_split(features, split, columns=["label", "n_mels", "n_frames", "mel"], rule=rule, rows_per_block=64)
    scored = ds.map_batches(
        _score_block, batch_format="pyarrow", batch_size=None,
        compute=ray.data.TaskPoolStrategy(size=max(1, workers)),
        fn_kwargs={"model": model, "model_id": loaded.model_id, "width": width, "hop": hop,
                   "temperatures": tuple(float(t) for t in temps), "use_gpu": use_gpu, "batch_size": batch_size},
        **resources)
    total = None
    for row in scored.iter_rows():
        total = _merge(total, json.loads(row["sums"]))
    if total is None or total["n"] != expected:
        got = 0 if total is None else total["n"]
        raise JobError(f"scored {got} of the {expected} labeled rows of split {split!r} in {features.uri}; "
                       "run the command again")
    total.update(loaded=loaded, width=width, hop=hop)
    return total


def evaluate(model_dir: Location | str, features: Location | str, *, split: str = "test",
             hop_seconds: float | None = None, batch_size: int = 64, use_gpu: bool = False,
             endpoint_url: str | None = None, loaded: LoadedModel | None = None, rule: SplitRule | ManifestSplit | None = None,
             split_seed: int | None = None, split_manifest: str | None = None, workers: int = 2, temperatures: Sequence[float] | None = None,
             address: str | None = None, num_cpus: int | None = None, expected: int | None = None) -> dict[str, Any]:
    """Score a model directory on the labeled rows of ``split`` (Ray workers; starts a local Ray if needed).

    ``split_seed`` (or a :class:`SplitRule` ``rule``) scores the split that the extraction's
    rule with that seed gives (as ``mgr train --split-seed``), computed per row;
    ``split_manifest`` the split of a manifest's ``split`` column (``mgr train --split-manifest``).

    Returns
    -------
    dict
        ``accuracy``, ``n``, ``per_genre`` ({genre: precision/recall/f1/support}),
        ``confusion`` (rows true, columns predicted), ``genres``, ``model_id``, ``split``,
        ``window_frames``, ``hop_frames``, ``temperature``, ``loss`` (mean cross-entropy of
        the calibrated track distributions), ``ece`` (at the model's temperature); for a
        crnn also ``accuracy_weighted``, ``accuracy_mean`` and ``average``. With
        ``temperatures``, ``calibration_sums`` holds the merged
        :class:`~mgr.inference.calibration.CalibrationSums` (not JSON).
    """
    from mgr.pipelines.runtime import ray_session

    model_dir = Location.of(model_dir, endpoint_url=endpoint_url)
    if (split_seed is not None or split_manifest is not None) and rule is None:
        from mgr.pipelines.train_data import split_rule

        rule = split_rule(read_manifest(Location.of(features, endpoint_url=endpoint_url)), split_seed,
                          split_manifest=split_manifest and Location.of(split_manifest, endpoint_url=endpoint_url).uri,
                          endpoint_url=endpoint_url)
    with ray_session(address=address, num_cpus=num_cpus, endpoint_url=model_dir.endpoint_url):
        sums = score_split(model_dir, features, split=split, hop_seconds=hop_seconds, temperatures=temperatures,
                           rule=rule, workers=workers, use_gpu=use_gpu, batch_size=batch_size,
                           endpoint_url=endpoint_url, loaded=loaded, expected=expected)
    loaded = sums["loaded"]
    genres = loaded.genres
    out: dict[str, Any] = {}
    if loaded.spec["architecture"] == "crnn":
        mode = loaded.model.average
        both = {a: metrics_from_confusion(sums["confusion"][a], genres=genres) for a in ("weighted", "mean")}
        out.update(both[mode])
        out.update(average=mode, accuracy_weighted=both["weighted"]["accuracy"], accuracy_mean=both["mean"]["accuracy"])
    else:
        out.update(metrics_from_confusion(sums["confusion"]["None"], genres=genres))
    cal = sums["calibration"]
    hist = cal.hist.get(float(loaded.temperature))
    out.update(model_id=loaded.model_id, split=split, window_frames=sums["width"], hop_frames=sums["hop"],
               temperature=loaded.temperature, loss=sums["loss_sum"] / max(sums["n"], 1),
               ece=expected_calibration_error(hist) if hist is not None else None)
    if temperatures is not None:
        out["calibration_sums"] = cal
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
    if result.get("loss") is not None:
        ece = f"   ECE {result['ece']:.4f}" if result.get("ece") is not None else ""
        lines.append(f"loss {result['loss']:.4f}   temperature {result.get('temperature', 1.0):.4g}{ece}")
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
