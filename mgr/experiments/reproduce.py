"""Reproducing the paper: extract once, train both models per seed and recipe, tabulate.

``reproduce("gtzan"|"fma", DATA, OUTPUT)`` lays OUTPUT out as::

    features/                 the extraction (split seed 0, or FMA's official split)
    features-seed<S>/         seed S's split of the same rows (random split, S > 0)
    seed-<S>/<model>-<recipe>/  model directories (model.pt, model.json, report.json, plots)
    scaling/<model>-<recipe>-w<N>[-gpu]/  short fixed runs measuring samples/s per worker count
    figures/                  per-step distributions of the crnn (the paper's Figures 6–7)
    confusion-<model>-<recipe>.png  confusion matrix summed over seeds
    results.json, results.md  the tables (:mod:`mgr.experiments.results`)

A new split per seed costs no decoding: ``features-seed<S>`` is a copy of the extracted
rows with only the ``split`` column recomputed by :func:`mgr.datasets.sources.split.assign_splits`
(the same rule the extraction used, so seed 0's copy would equal ``features``). Re-running
the same command resumes: extraction, copies and trainings already done are skipped.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any, Sequence

from mgr.io import storage
from mgr.errors import ConfigError, StorageError
from mgr.datasets.featureset import MANIFEST_NAME, SCHEMA, read_manifest, write_manifest
from mgr.datasets.sources.split import assign_splits

__all__ = ["DATASETS", "MODEL_ORDER", "RECIPES", "SPLITS", "RATIOS", "reproduce", "seed_features",
           "find_tracks_csv", "default_scaling_workers", "throughput"]

DATASETS = ("gtzan", "fma")
MODEL_ORDER = ("crnn", "cnn")
RECIPES = ("paper", "mgr")
SPLITS = ("random", "official")
RATIOS = (0.7, 0.2, 0.1)


def _say(verbose: bool, line: str) -> None:
    if verbose:
        print(f"mgr reproduce: {line}", flush=True)


def find_tracks_csv(data_uri: str, *, endpoint_url: str | None = None) -> str:
    """FMA's ``tracks.csv`` next to the audio: in DATA, DATA/fma_metadata or DATA/../fma_metadata."""
    parent = data_uri.rstrip("/").rsplit("/", 1)[0] if "/" in data_uri.rstrip("/") else "."
    candidates = [storage.join(data_uri, "tracks.csv"), storage.join(data_uri, "fma_metadata", "tracks.csv"),
                  storage.join(parent, "fma_metadata", "tracks.csv")]
    for uri in candidates:
        fs, path = storage.filesystem(uri, endpoint_url=endpoint_url)
        try:
            if fs.exists(path):
                return uri
        except OSError:
            continue
    raise ConfigError(f"no tracks.csv found for FMA data {data_uri} (looked at {', '.join(candidates)}); "
                      "pass --tracks PATH/fma_metadata/tracks.csv")


def _manifest_or_none(uri: str, *, endpoint_url: str | None) -> dict | None:
    try:
        return read_manifest(uri, endpoint_url=endpoint_url)
    except StorageError:
        return None


def seed_features(source_uri: str, output_uri: str, *, seed: int, ratios: Sequence[float] = RATIOS,
                  endpoint_url: str | None = None) -> dict[str, Any]:
    """Copy a features dataset with a new seeded stratified split; return its manifest.

    Every row is kept (errors too); only ``split`` changes, by the rule of the extraction
    (:func:`~mgr.datasets.sources.split.assign_splits`, keyed on genre and track id). Skipped when
    ``output_uri`` already holds the finished copy for this seed.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = read_manifest(source_uri, endpoint_url=endpoint_url)
    done = _manifest_or_none(output_uri, endpoint_url=endpoint_url)
    if (done and done.get("split", {}).get("seed") == seed and done.get("view_of") == source_uri
            and done.get("counts", {}).get("files") == src.get("counts", {}).get("files")):
        return done
    fs_in, path_in = storage.filesystem(source_uri, endpoint_url=endpoint_url)
    fs_out, path_out = storage.filesystem(output_uri, endpoint_url=endpoint_url)
    try:
        files = sorted(p for p in fs_in.find(path_in) if p.endswith(".parquet"))
        if fs_out.exists(path_out):
            for old in fs_out.find(path_out):
                if old.endswith(".parquet") or old.endswith(MANIFEST_NAME):
                    fs_out.rm(old)
        elif not storage.is_remote(output_uri):
            fs_out.makedirs(path_out, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot copy {source_uri} to {output_uri}: {exc}") from None
    if not files:
        raise StorageError(f"{source_uri} holds no Parquet files: is it the OUTPUT of `mgr extract`?")
    ok_split: dict[str, Counter] = {}
    n_rows = 0
    for i, f in enumerate(files):
        with fs_in.open(f, "rb") as fh:
            table = pq.read_table(fh).select(SCHEMA.names).cast(SCHEMA)
        cols = {c: table.column(c).to_pylist() for c in ("uri", "track_id", "label", "artist", "error")}
        records = [{"uri": u, "track_id": t, "label": lab, "artist": a, "split": None, "error": None}
                   for u, t, lab, a in zip(cols["uri"], cols["track_id"], cols["label"], cols["artist"])]
        assign_splits(records, ratios=tuple(ratios), seed=seed, keep_source_split=False)
        splits = [r["split"] for r in records]
        table = table.set_column(SCHEMA.get_field_index("split"), SCHEMA.field("split"),
                                 pa.array(splits, type=SCHEMA.field("split").type))
        for s, lab, err in zip(splits, cols["label"], cols["error"]):
            if s and lab is not None and not err:
                ok_split.setdefault(s, Counter())[lab] += 1
        n_rows += table.num_rows
        with fs_out.open(storage.join(path_out, f"part-{i:05d}.parquet"), "wb") as fh:
            pq.write_table(table, fh)
    manifest = json.loads(json.dumps(src))
    manifest["view_of"] = source_uri
    manifest["split"] = {"ratios": list(ratios), "seed": seed, "group_by": None, "official": False}
    counts = manifest.setdefault("counts", {})
    counts["by_split"] = {s: sum(c.values()) for s, c in sorted(ok_split.items())}
    counts["by_split_label"] = {s: dict(sorted(c.items())) for s, c in sorted(ok_split.items())}
    manifest.pop("run", None)
    if counts.get("files") not in (None, n_rows):
        raise StorageError(f"{source_uri} lists {counts.get('files')} files but holds {n_rows} rows")
    write_manifest(output_uri, manifest, endpoint_url=endpoint_url)
    return manifest


def default_scaling_workers(workers: int) -> list[int]:
    """1, 2, 4, … up to ``workers``, and ``workers`` itself."""
    out, k = [], 1
    while k < workers:
        out.append(k)
        k *= 2
    return out + [workers]


def _read_history(model_dir: str, *, endpoint_url: str | None) -> list[dict]:
    fs, path = storage.filesystem(storage.join(model_dir, "metrics.jsonl"), endpoint_url=endpoint_url)
    with fs.open(path, "rb") as fh:
        return [json.loads(line) for line in fh.read().decode().splitlines() if line.strip()]


def throughput(history: Sequence[dict]) -> dict[str, Any]:
    """Samples and epoch seconds of a run's ``metrics.jsonl``, leaving out the first epoch when there are more."""
    measured = list(history[1:] if len(history) > 1 else history)
    return {"samples": int(sum(h["samples"] for h in measured)),
            "epoch_seconds": float(sum(h["time_s"] for h in measured)), "epochs_measured": len(measured)}


def _finished_run(model_dir: str, *, features: str, model: str, recipe: str, epochs: int | None, seed: int,
                  endpoint_url: str | None) -> dict | None:
    """The train summary of a finished run in ``model_dir`` made with these settings, else None.

    A model directory is written only after its training finished; ``report.json`` holds its
    test evaluation. A run asked for with other epochs, seed or features is trained (resumed) again.
    """
    from mgr.training.engine import RECIPE_PRESETS
    from mgr.errors import MgrError
    from mgr.models.modeldir import read_spec

    try:
        spec = read_spec(model_dir, endpoint_url=endpoint_url)
        fs, path = storage.filesystem(storage.join(model_dir, "report.json"), endpoint_url=endpoint_url)
        with fs.open(path, "rb") as fh:
            report = json.loads(fh.read())
    except (MgrError, OSError, ValueError):
        return None
    prov = spec.get("provenance", {})
    rec = prov.get("recipe", {})
    want = epochs if epochs is not None else RECIPE_PRESETS[recipe][model]["epochs"]
    if (prov.get("features") != features or rec.get("epochs") != want or rec.get("seed") != seed
            or rec.get("preset") != recipe or spec.get("architecture") != model or not report.get("test")):
        return None
    m = spec.get("metrics", {})
    return {"output": model_dir, "test": report["test"], "epochs_trained": m.get("epochs_trained"),
            "best_epoch": m.get("best_epoch"), "best_val_accuracy": m.get("best_val_accuracy"),
            "test_accuracy": report["test"]["accuracy"], "seconds": None, "reused": True}


def _train_kwargs(recipe: str, *, crop_seconds, model_options) -> dict:
    """Test/size knobs apply to mgr's recipe only: the paper recipe stays the paper's."""
    if recipe != "mgr":
        return {}
    return {"crop_seconds": crop_seconds, "model_options": dict(model_options or {})}


def reproduce(dataset: str, data_uri: str, output_uri: str, *, seeds: int = 3, workers: int = 2,
              use_gpu: bool = False, epochs: int | None = None, split: str = "random", tracks: str | None = None,
              models: Sequence[str] = MODEL_ORDER, recipes: Sequence[str] = RECIPES,
              scaling_workers: Sequence[int] | None = None, scaling_epochs: int = 3,
              scaling_run: tuple[str, str] = ("cnn", "paper"), figure_clips: int = 4,
              crop_seconds: float | None = None, model_options: dict | None = None,
              address: str | None = None, num_cpus: int | None = None, endpoint_url: str | None = None,
              verbose: bool = True) -> dict[str, Any]:
    """Run the paper's experiments on GTZAN or FMA small and write ``results.json``/``results.md``.

    Parameters
    ----------
    dataset : {"gtzan", "fma"}
        GTZAN: a folder per genre. FMA: ``fma_small`` (``ddd/dddddd.mp3``) with ``tracks``.
    data_uri, output_uri : str
        Audio folder and the output folder (local or ``s3://``).
    seeds : int
        Seeds 0 … seeds-1; each draws a new stratified 70/20/10 split (``split="random"``)
        and seeds the training.
    workers, use_gpu, epochs :
        Ray Train workers (GPUs with ``use_gpu``) and an epoch cap (None: preset default).
    split : {"random", "official"}
        ``official``: FMA's own split (the same for every seed).
    tracks : str, optional
        FMA's ``tracks.csv`` (found next to DATA when omitted).
    models, recipes :
        The matrix to run (default: both models × both recipes).
    scaling_workers : sequence of int, optional
        Worker counts of the throughput runs (default 1, 2, 4, … workers; empty: none).
    scaling_epochs : int
        Epochs of each throughput run (the first is left out of the figure when > 1).
    scaling_run : (model, recipe)
        What the throughput runs train.
    figure_clips : int
        Test clips of seed 0 whose per-step distributions are drawn, per crnn recipe.
    crop_seconds, model_options :
        Overrides of mgr's recipe only (crop length, model size); the paper recipe is fixed.

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    from mgr.experiments.results import build_results

    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {SPLITS}, got {split!r}")
    if split == "official" and dataset != "fma":
        raise ConfigError("--split official needs FMA (GTZAN defines no split); use the default random split")
    if seeds < 1 or workers < 1:
        raise ConfigError(f"--seeds and --workers must be at least 1, got {seeds} and {workers}")
    bad = [m for m in models if m not in MODEL_ORDER] + [r for r in recipes if r not in RECIPES]
    if bad or not models or not recipes:
        raise ConfigError(f"models must be among {MODEL_ORDER} and recipes among {RECIPES} (got {list(models)}, "
                          f"{list(recipes)})")
    scaling = default_scaling_workers(workers) if scaling_workers is None else sorted(set(scaling_workers))
    if any(k < 1 for k in scaling):
        raise ConfigError(f"scaling worker counts must be at least 1, got {list(scaling)}")
    labels = "folder"
    if dataset == "fma":
        labels = f"fma:{tracks or find_tracks_csv(data_uri, endpoint_url=endpoint_url)}"
    features = storage.join(output_uri, "features")
    settings = {"data": data_uri, "labels": labels, "workers": workers, "use_gpu": use_gpu, "epochs": epochs,
                "models": list(models), "recipes": list(recipes), "crop_seconds": crop_seconds,
                "model_options": model_options, "scaling_workers": list(scaling), "scaling_epochs": scaling_epochs}
    from mgr.pipelines.runtime import ray_session

    with ray_session(address=address, num_cpus=num_cpus, endpoint_url=endpoint_url):
        return _run(dataset, data_uri, output_uri, features=features, labels=labels, seeds=seeds, split=split,
                    settings=settings, scaling=scaling, scaling_epochs=scaling_epochs, scaling_run=scaling_run,
                    figure_clips=figure_clips, crop_seconds=crop_seconds, model_options=model_options,
                    address=address, endpoint_url=endpoint_url, verbose=verbose, build=build_results)


def _run(dataset, data_uri, output_uri, *, features, labels, seeds, split, settings, scaling, scaling_epochs,
         scaling_run, figure_clips, crop_seconds, model_options, address, endpoint_url, verbose, build):
    from mgr.pipelines.extract import extract
    from mgr.pipelines.train import train

    t0 = time.perf_counter()
    _say(verbose, f"extracting {data_uri} into {features}")
    manifest = extract(data_uri, features, labels=labels, subset="small" if dataset == "fma" else None,
                       official_split=split == "official", seed=0, split=RATIOS, address=address,
                       endpoint_url=endpoint_url)
    extraction = {"features": features, "counts": manifest["counts"], "genres": manifest["genres"],
                  "run": manifest.get("run")}
    _say(verbose, f"{manifest['counts']['ok']} usable clips, {manifest['counts']['errors']} unusable, "
         f"genres {manifest['genres']}")
    runs: list[dict] = []
    measurements: list[dict] = []
    figures: list[str] = []
    seed_list = list(range(seeds))

    def write_results():
        results = build(runs, dataset=dataset, split=split, seeds=seed_list, settings=settings,
                        scaling=measurements, figures=figures, extraction=extraction)
        results["seconds"] = round(time.perf_counter() - t0, 1)
        _write_results(output_uri, results, endpoint_url=endpoint_url)
        _write_confusions(output_uri, results, endpoint_url=endpoint_url)
        return results

    for seed in seed_list:
        feat = features
        if split == "random" and seed > 0:
            feat = storage.join(output_uri, f"features-seed{seed}")
            seed_features(features, feat, seed=seed, endpoint_url=endpoint_url)
        for model in settings["models"]:
            for recipe in settings["recipes"]:
                out = storage.join(output_uri, f"seed-{seed}", f"{model}-{recipe}")
                summary = _finished_run(out, features=feat, model=model, recipe=recipe, epochs=settings["epochs"],
                                        seed=seed, endpoint_url=endpoint_url)
                _say(verbose, f"seed {seed}: {'reusing' if summary else 'training'} {model}/{recipe} in {out}")
                summary = summary or train(feat, out, model=model, preset=recipe, workers=settings["workers"],
                                use_gpu=settings["use_gpu"], epochs=settings["epochs"], average="weighted",
                                seed=seed, address=address, endpoint_url=endpoint_url, verbose=verbose,
                                **_train_kwargs(recipe, crop_seconds=crop_seconds, model_options=model_options))
                if summary.get("test") is None:
                    raise ConfigError(f"{feat} has no labeled test clips to evaluate on")
                from mgr.experiments.results import run_record

                runs.append(run_record(seed=seed, model=model, recipe=recipe, evaluation=summary["test"],
                                       model_dir=out, features=feat, training=summary))
                if model == "crnn" and seed == seed_list[0] and figure_clips > 0:
                    from mgr.experiments.figures import write_step_figures

                    figures += write_step_figures(out, feat, storage.join(output_uri, "figures"),
                                                  n_clips=figure_clips, prefix=f"crnn-{recipe}-seed{seed}",
                                                  endpoint_url=endpoint_url)
        write_results()
    scaling_model, scaling_recipe = scaling_run
    for k in scaling:
        out = storage.join(output_uri, "scaling",
                           f"{scaling_model}-{scaling_recipe}-w{k}{'-gpu' if settings['use_gpu'] else ''}")
        reused = _finished_run(out, features=features, model=scaling_model, recipe=scaling_recipe,
                               epochs=scaling_epochs, seed=0, endpoint_url=endpoint_url)
        _say(verbose, f"throughput: {'reusing' if reused else 'measuring'} {scaling_model}/{scaling_recipe} with "
             f"{k} worker(s), {scaling_epochs} epoch(s)")
        w0 = time.perf_counter()
        if not reused:
            train(features, out, model=scaling_model, preset=scaling_recipe, workers=k, use_gpu=settings["use_gpu"],
                  epochs=scaling_epochs, patience=None, seed=0, address=address, endpoint_url=endpoint_url,
                  verbose=verbose, **_train_kwargs(scaling_recipe, crop_seconds=crop_seconds,
                                                   model_options=model_options))
        measurements.append({"workers": k, "use_gpu": settings["use_gpu"], "model": scaling_model,
                             "recipe": scaling_recipe, "epochs": scaling_epochs, "model_dir": out,
                             "wall_s": None if reused else round(time.perf_counter() - w0, 2),
                             **throughput(_read_history(out, endpoint_url=endpoint_url))})
    results = write_results()
    _say(verbose, f"wrote {storage.join(output_uri, 'results.md')} ({results['seconds']:.0f} s)")
    return results


def _write_results(output_uri: str, results: dict, *, endpoint_url: str | None) -> None:
    from mgr.models.modeldir import write_bytes
    from mgr.experiments.results import render_markdown

    root = output_uri.rstrip("/")
    write_bytes(storage.join(output_uri, "results.json"),
                 json.dumps(results, indent=2, sort_keys=True).encode(), endpoint_url=endpoint_url)
    write_bytes(storage.join(output_uri, "results.md"), render_markdown(results, root=root).encode(),
                 endpoint_url=endpoint_url)


def _write_confusions(output_uri: str, results: dict, *, endpoint_url: str | None) -> None:
    """The confusion matrices summed over seeds, as PNG (names from ``results["confusion"]``)."""
    from mgr.reporting import plots
    from mgr.models.modeldir import write_bytes

    for c in results["confusion"]:
        png = plots.confusion_matrix_png(c["matrix"], c["genres"], title=f"{c['model']}/{c['recipe']}, test, "
                                         f"summed over {len(c['seeds'])} seed(s)")
        write_bytes(storage.join(output_uri, c["png"]), png, endpoint_url=endpoint_url)
