"""Reproducing the paper: extract once, train both models per seed and recipe, tabulate.

``reproduce("gtzan"|"fma", DATA, OUTPUT)`` lays OUTPUT out as::

    features/                 the extraction (split seed 0, or FMA's official split)
    seed-<S>/<model>-<recipe>/  model directories (model.pt, model.json, report.json, plots)
    scaling/<model>-<recipe>-w<N>[-gpu]/  short fixed runs measuring samples/s per worker count
    figures/                  per-step distributions of the crnn (the paper's Figures 6–7)
    confusion-<model>-<recipe>.png  confusion matrix summed over seeds
    results.json, results.md  the tables (:mod:`mgr.experiments.results`)

A new split per seed costs neither decoding nor a copy: seed S > 0 trains and evaluates on
``features`` with ``split_seed=S`` (the extraction's split rule with seed S, computed per
row while the rows stream to the workers; seed 0's rule is the stored split). Re-running
the same command resumes: the extraction and trainings already done are skipped.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

from mgr.errors import ConfigError
from mgr.io.location import Location

__all__ = ["DATASETS", "MODEL_ORDER", "RECIPES", "SPLITS", "RATIOS", "reproduce", "find_tracks_csv",
           "default_scaling_workers", "throughput"]

DATASETS = ("gtzan", "fma")
MODEL_ORDER = ("crnn", "cnn")
RECIPES = ("paper", "mgr")
SPLITS = ("random", "official")
RATIOS = (0.7, 0.2, 0.1)


def _say(verbose: bool, line: str) -> None:
    if verbose:
        print(f"mgr reproduce: {line}", flush=True)


def find_tracks_csv(data: Location | str, *, endpoint_url: str | None = None) -> str:
    """FMA's ``tracks.csv`` next to the audio: in DATA, DATA/fma_metadata or DATA/../fma_metadata."""
    from mgr.errors import StorageError

    data = Location.of(data, endpoint_url=endpoint_url)
    uri = data.uri.rstrip("/")
    parent = Location(uri.rsplit("/", 1)[0] if "/" in uri else ".", endpoint_url=data.endpoint_url)
    candidates = [data.join("tracks.csv"), data.join("fma_metadata", "tracks.csv"),
                  parent.join("fma_metadata", "tracks.csv")]
    for loc in candidates:
        try:
            if loc.exists():
                return loc.uri
        except StorageError:
            continue
    raise ConfigError(f"no tracks.csv found for FMA data {data.uri} (looked at "
                      f"{', '.join(c.uri for c in candidates)}); pass --tracks PATH/fma_metadata/tracks.csv")


def default_scaling_workers(workers: int) -> list[int]:
    """1, 2, 4, … up to ``workers``, and ``workers`` itself."""
    out, k = [], 1
    while k < workers:
        out.append(k)
        k *= 2
    return out + [workers]


def _read_history(model_dir: Location) -> list[dict]:
    text = model_dir.join("metrics.jsonl").read_bytes().decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def throughput(history: Sequence[dict]) -> dict[str, Any]:
    """Samples and epoch seconds of a run's ``metrics.jsonl``, leaving out the first epoch when there are more."""
    measured = list(history[1:] if len(history) > 1 else history)
    return {"samples": int(sum(h["samples"] for h in measured)),
            "epoch_seconds": float(sum(h["time_s"] for h in measured)), "epochs_measured": len(measured)}


def _finished_run(model_dir: Location, *, features: Location, model: str, recipe: str, epochs: int | None,
                  seed: int, split_seed: int | None) -> dict | None:
    """The train summary of a finished run in ``model_dir`` made with these settings, else None.

    A model directory is written only after its training finished; ``report.json`` holds its
    test evaluation. A run asked for with other epochs, seed, split or features is trained
    (resumed) again.
    """
    from mgr.errors import MgrError
    from mgr.models.modeldir import read_spec
    from mgr.training.engine import RECIPE_PRESETS

    try:
        spec = read_spec(model_dir)
        report = model_dir.join("report.json").read_json()
    except (MgrError, OSError, ValueError):
        return None
    prov = spec.get("provenance", {})
    rec = prov.get("recipe", {})
    want = epochs if epochs is not None else RECIPE_PRESETS[recipe][model]["epochs"]
    got_split = (prov.get("split") or {}).get("seed")
    if (prov.get("features") != features.uri or rec.get("epochs") != want or rec.get("seed") != seed
            or rec.get("preset") != recipe or spec.get("architecture") != model or not report.get("test")
            or got_split != split_seed):
        return None
    m = spec.get("metrics", {})
    return {"output": model_dir.uri, "test": report["test"], "epochs_trained": m.get("epochs_trained"),
            "best_epoch": m.get("best_epoch"), "best_val_accuracy": m.get("best_val_accuracy"),
            "test_accuracy": report["test"]["accuracy"], "seconds": None, "reused": True}


def _train_kwargs(recipe: str, *, crop_seconds, model_options) -> dict:
    """Test/size knobs apply to mgr's recipe only: the paper recipe stays the paper's."""
    if recipe != "mgr":
        return {}
    return {"crop_seconds": crop_seconds, "model_options": dict(model_options or {})}


def reproduce(dataset: str, data_uri: Location | str, output_uri: Location | str, *, seeds: int = 3, workers: int = 2,
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
    data_uri, output_uri : Location or str
        Audio folder and the output folder (local or ``s3://``; a str takes ``endpoint_url``).
    seeds : int
        Seeds 0 … seeds-1; each draws a new stratified 70/20/10 split (``split="random"``:
        the extraction's rule with that seed, applied on the fly, no copy) and seeds the training.
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
    data = Location.of(data_uri, endpoint_url=endpoint_url)
    output = Location.of(output_uri, endpoint_url=endpoint_url)
    labels = "folder"
    if dataset == "fma":
        labels = f"fma:{tracks or find_tracks_csv(data)}"
    settings = {"data": data.uri, "labels": labels, "workers": workers, "use_gpu": use_gpu, "epochs": epochs,
                "models": list(models), "recipes": list(recipes), "crop_seconds": crop_seconds,
                "model_options": model_options, "scaling_workers": list(scaling), "scaling_epochs": scaling_epochs}
    from mgr.pipelines.runtime import ray_session

    with ray_session(address=address, num_cpus=num_cpus, endpoint_url=output.endpoint_url):
        return _run(dataset, data, output, labels=labels, seeds=seeds, split=split,
                    settings=settings, scaling=scaling, scaling_epochs=scaling_epochs, scaling_run=scaling_run,
                    figure_clips=figure_clips, crop_seconds=crop_seconds, model_options=model_options,
                    address=address, verbose=verbose, build=build_results)


def _run(dataset, data: Location, output: Location, *, labels, seeds, split, settings, scaling, scaling_epochs,
         scaling_run, figure_clips, crop_seconds, model_options, address, verbose, build):
    from mgr.experiments.results import run_record
    from mgr.pipelines.catalog_config import ExtractConfig
    from mgr.pipelines.extract import extract
    from mgr.pipelines.train import train
    from mgr.pipelines.train_config import TrainJobConfig

    t0 = time.perf_counter()
    features = output.join("features")
    _say(verbose, f"extracting {data.uri} into {features.uri}")
    manifest = extract(ExtractConfig(data.uri, features.uri, labels=labels, subset="small" if dataset == "fma" else None,
                                     official_split=split == "official", seed=0, split=RATIOS, address=address,
                                     endpoint_url=data.endpoint_url))
    extraction = {"features": features.uri, "counts": manifest["counts"], "genres": manifest["genres"],
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
        _write_results(output, results)
        _write_confusions(output, results)
        return results

    def job(out: Location, **options) -> TrainJobConfig:
        return TrainJobConfig(features, out, workers=settings["workers"], use_gpu=settings["use_gpu"],
                              address=address, verbose=verbose, **options)

    for seed in seed_list:
        # seed S > 0 of a random split: the extraction's rule with seed S, applied per row (no copy)
        split_seed = seed if split == "random" and seed > 0 else None
        for model in settings["models"]:
            for recipe in settings["recipes"]:
                out = output.join(f"seed-{seed}", f"{model}-{recipe}")
                summary = _finished_run(out, features=features, model=model, recipe=recipe,
                                        epochs=settings["epochs"], seed=seed, split_seed=split_seed)
                _say(verbose, f"seed {seed}: {'reusing' if summary else 'training'} {model}/{recipe} in {out.uri}")
                summary = summary or train(job(
                    out, model=model, preset=recipe, epochs=settings["epochs"], average="weighted", seed=seed,
                    split_seed=split_seed,
                    **_train_kwargs(recipe, crop_seconds=crop_seconds, model_options=model_options)))
                if summary.get("test") is None:
                    raise ConfigError(f"{features.uri} has no labeled test clips to evaluate on")
                runs.append(run_record(seed=seed, model=model, recipe=recipe, evaluation=summary["test"],
                                       model_dir=out.uri, features=features.uri, split_seed=split_seed,
                                       training=summary))
                if model == "crnn" and seed == seed_list[0] and figure_clips > 0:
                    from mgr.experiments.figures import write_step_figures

                    figures += write_step_figures(out, features, output.join("figures"), n_clips=figure_clips,
                                                  prefix=f"crnn-{recipe}-seed{seed}")
        write_results()
    scaling_model, scaling_recipe = scaling_run
    for k in scaling:
        out = output.join("scaling", f"{scaling_model}-{scaling_recipe}-w{k}{'-gpu' if settings['use_gpu'] else ''}")
        reused = _finished_run(out, features=features, model=scaling_model, recipe=scaling_recipe,
                               epochs=scaling_epochs, seed=0, split_seed=None)
        _say(verbose, f"throughput: {'reusing' if reused else 'measuring'} {scaling_model}/{scaling_recipe} with "
             f"{k} worker(s), {scaling_epochs} epoch(s)")
        w0 = time.perf_counter()
        if not reused:
            train(job(out, model=scaling_model, preset=scaling_recipe, epochs=scaling_epochs, patience=None, seed=0,
                      **_train_kwargs(scaling_recipe, crop_seconds=crop_seconds, model_options=model_options))
                  .replace(workers=k))
        measurements.append({"workers": k, "use_gpu": settings["use_gpu"], "model": scaling_model,
                             "recipe": scaling_recipe, "epochs": scaling_epochs, "model_dir": out.uri,
                             "wall_s": None if reused else round(time.perf_counter() - w0, 2),
                             **throughput(_read_history(out))})
    results = write_results()
    _say(verbose, f"wrote {output.join('results.md').uri} ({results['seconds']:.0f} s)")
    return results


def _write_results(output: Location, results: dict) -> None:
    from mgr.experiments.results import render_markdown

    output.join("results.json").write_bytes(json.dumps(results, indent=2, sort_keys=True).encode())
    output.join("results.md").write_bytes(render_markdown(results, root=output.uri.rstrip("/")).encode())


def _write_confusions(output: Location, results: dict) -> None:
    """The confusion matrices summed over seeds, as PNG (names from ``results["confusion"]``)."""
    from mgr.reporting import plots

    for c in results["confusion"]:
        png = plots.confusion_matrix_png(c["matrix"], c["genres"], title=f"{c['model']}/{c['recipe']}, test, "
                                         f"summed over {len(c['seeds'])} seed(s)")
        output.join(c["png"]).write_bytes(png)
