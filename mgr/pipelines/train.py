"""Data-parallel training on Ray Train: features dataset in, model directory out.

:func:`train` takes one :class:`~mgr.pipelines.train_config.TrainJobConfig` and reads as its
steps: read the features' manifest and resolve the recipe; count the splits (one
aggregate); fix the run (``run.json``, with the per-band normalisation from a distributed
pass on a first run); fit under a ``TorchTrainer`` whose workers stream their shards from
storage through Ray Data (:mod:`mgr.pipelines.train_data`), with checkpoints in
``OUTPUT/ray_train``; export the model directory, calibrated on val and scored on test
(:mod:`mgr.pipelines.train_export`). Re-running the same command on the same OUTPUT resumes
from the latest checkpoint. The driver holds no per-clip data at any step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mgr.audio.features import pad_value
from mgr.datasets.featureset import feature_config, read_manifest
from mgr.datasets.sources.split import ManifestSplit, SplitRule
from mgr.errors import ConfigError, JobError, MgrError, StorageError, user_error
from mgr.io.location import Location
from mgr.pipelines.train_config import TrainJobConfig
from mgr.training import engine

__all__ = ["RUN_NAME", "RUN_FILE", "TRAIN_WORKER_CPUS", "TrainJobConfig", "Plan", "train"]

RUN_NAME = "ray_train"
RUN_FILE = "run.json"
#: run.json keys that must not change when an OUTPUT is trained again (resumed)
FIXED_KEYS = ("architecture", "preset", "genres", "feature_config", "window_frames", "crop",
              "average", "model_options", "split")
#: CPUs a CPU-only training worker reserves: less than one, so that on a machine whose cores
#: all hold workers the ingest tasks (fractional CPUs) still run
TRAIN_WORKER_CPUS = 0.5


@dataclass(frozen=True)
class Plan:
    """What the driver knows before fitting: all of it small, none of it per clip."""

    config: TrainJobConfig
    manifest: dict
    genres: list
    recipe: engine.TrainRecipe
    model_config: dict
    rule: SplitRule | ManifestSplit | None
    counts: dict
    run: dict


def train(config: TrainJobConfig) -> dict[str, Any]:
    """Train ``config.model`` on a features dataset with Ray Train and write the model directory.

    Returns
    -------
    dict
        ``output``, ``epochs_trained``, ``best_epoch``, ``best_val_accuracy``, ``test``
        (the :func:`mgr.pipelines.evaluate.evaluate` result or None), ``test_accuracy``,
        ``temperature``, ``seconds``.
    """
    from mgr.pipelines.runtime import ray_session
    from mgr.pipelines.train_export import export

    t0 = time.perf_counter()
    plan = _resolve(config)
    with ray_session(address=config.address, num_cpus=config.num_cpus, endpoint_url=config.endpoint_url):
        plan = _count_splits(plan)
        plan = _fix_run(plan)
        _announce(plan)
        state = _fit(plan)
        summary = export(state, plan=plan)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _resolve(config: TrainJobConfig) -> Plan:
    """Manifest, vocabulary, recipe and model configuration (fails early on a bad one)."""
    from mgr.models import build_model

    manifest = read_manifest(config.features)
    fcfg = feature_config(manifest)
    genres = list(manifest.get("genres") or [])
    if len(genres) < 2:
        raise ConfigError(f"{config.features.uri} has {len(genres)} genres in its manifest; training needs labels "
                          "for at least 2 (extract with --labels)")
    recipe = engine.resolve_recipe(config.model, preset=config.preset, feature_config=fcfg,
                                   crop_seconds=config.crop_seconds, epochs=config.epochs,
                                   batch_size=config.batch_size, lr=config.lr, patience=config.patience,
                                   seed=config.seed, average=config.average, model_options=config.model_options)
    model_config = recipe.model_config(n_classes=len(genres), n_mels=fcfg.n_mels)
    build_model(config.model, **model_config)
    from mgr.pipelines.train_data import split_rule

    rule = split_rule(manifest, config.split_seed, split_manifest=config.split_manifest,
                      endpoint_url=config.endpoint_url)
    return Plan(config=config, manifest=manifest, genres=genres, recipe=recipe, model_config=model_config,
                rule=rule, counts={}, run={})


def _count_splits(plan: Plan) -> Plan:
    """Labelled rows per split (one distributed aggregate) and the checks that need them."""
    from mgr.pipelines.train_data import split_summary

    fcfg = feature_config(plan.manifest)
    summary = split_summary(plan.config.features, rule=plan.rule)
    labels = {lab for by in summary["counts"].values() for lab in by}
    unknown = sorted(labels - set(plan.genres))
    if unknown:
        raise ConfigError(f"{plan.config.features.uri} has labels {unknown} outside the vocabulary of its "
                          f"manifest {plan.genres}")
    bad = set(summary["n_mels"]) - {fcfg.n_mels}
    if bad:
        raise ConfigError(f"features have n_mels {sorted(bad)} but its manifest says {fcfg.n_mels}")
    counts = {s: sum(summary["counts"].get(s, {}).values()) for s in ("train", "val", "test")}
    if counts["train"] == 0 or counts["val"] == 0:
        raise ConfigError(f"{plan.config.features.uri} needs labeled rows in both the train and val splits "
                          f"(found {counts['train']} and {counts['val']})")
    return _replace(plan, counts=counts)


def _fix_run(plan: Plan) -> Plan:
    """Write ``run.json`` on a first run (normalisation from a distributed pass); on a re-run
    check it matches and reuse its statistics."""
    from mgr.pipelines.train_data import band_statistics

    config, recipe = plan.config, plan.recipe
    fcfg = feature_config(plan.manifest)
    run = {
        "architecture": config.model, "preset": config.preset, "genres": plan.genres,
        "feature_config": fcfg.to_dict(), "window_frames": recipe.window_frames, "crop": recipe.crop,
        "average": config.average if config.model == "crnn" else None, "model_options": config.model_options,
        "features": config.features.uri, "split": plan.rule.to_dict() if plan.rule else None,
    }
    where = config.output.join(RUN_FILE)
    try:
        if where.exists():
            old = where.read_json()
            changed = [k for k in FIXED_KEYS if old.get(k) != run.get(k)]
            if changed:
                raise ConfigError(
                    f"{config.output.uri} already holds a {old.get('architecture')}/{old.get('preset')} training "
                    f"run that differs in {changed}; use a new OUTPUT or the same options to resume it")
            return _replace(plan, run={**run, "normalization": old["normalization"]})
        mean, std = band_statistics(config.features, n_mels=fcfg.n_mels, rule=plan.rule)
        run["normalization"] = {"mean": mean.tolist(), "std": std.tolist()}
        where.write_json(run)
    except StorageError as exc:
        raise StorageError(f"cannot use OUTPUT {config.output.uri}: {exc}", retryable=exc.retryable) from None
    return _replace(plan, run=run)


def _announce(plan: Plan) -> None:
    c = plan.config
    if c.verbose:
        split = f", {plan.rule.describe()}" if plan.rule else ""
        print(f"mgr train: {c.model}/{c.preset} on {plan.counts['train']} train, {plan.counts['val']} val clips, "
              f"{len(plan.genres)} genres, window {plan.recipe.window_frames} frames, {c.workers} worker(s)"
              f"{' on GPU' if c.use_gpu else ''}{split}", flush=True)


def _replace(plan: Plan, **changes) -> Plan:
    import dataclasses

    return dataclasses.replace(plan, **changes)


def _storage(output: Location):
    """``(storage_path, storage_filesystem)`` for RunConfig (pyarrow over s3fs for s3)."""
    if not output.is_remote:
        return output.path, None
    fs, path = output.arrow_filesystem()
    return path, fs


def _failure_cause(exc: BaseException) -> MgrError | None:
    failures = getattr(exc, "worker_failures", None) or {}
    for err in list(failures.values()) + [getattr(exc, "controller_failure", None), exc]:
        if isinstance(err, BaseException):
            found = user_error(err)
            if found is not None:
                return found
    return None


def _fit(plan: Plan) -> dict:
    """Run the TorchTrainer on streamed shards; return the training state of its latest checkpoint."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from mgr.pipelines.train_data import train_stream, val_stream
    from mgr.pipelines.train_shards import ExactDataConfig
    from mgr.pipelines.train_loop import load_state, train_loop_per_worker

    c, recipe = plan.config, plan.recipe
    fcfg = feature_config(plan.manifest)
    if c.use_gpu and not c.address and ray.cluster_resources().get("GPU", 0) < c.workers:
        raise ConfigError(f"--gpu asks for {c.workers} GPU worker(s) but this Ray has "
                          f"{int(ray.cluster_resources().get('GPU', 0))} GPU(s)")
    pad = pad_value(fcfg)
    loop_config = {
        "recipe": recipe.to_dict(), "model_config": plan.model_config, "n_mels": fcfg.n_mels, "pad_value": pad,
        "mean": plan.run["normalization"]["mean"], "std": plan.run["normalization"]["std"],
        "n_train": int(plan.counts["train"]), "inject_failure": c.inject_failure,
    }
    datasets = {
        "train": train_stream(c.features, genres=plan.genres, width=recipe.window_frames, pad=pad,
                              crop=recipe.crop, rule=plan.rule),
        "val": val_stream(c.features, "val", genres=plan.genres, rule=plan.rule),
    }
    storage_path, storage_fs = _storage(c.output)
    resources = {"CPU": 1, "GPU": 1} if c.use_gpu else {"CPU": TRAIN_WORKER_CPUS}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=c.workers, use_gpu=c.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=c.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_accuracy", checkpoint_score_order="max"),
        ),
        datasets=datasets,
        dataset_config=ExactDataConfig(equal=["train"], exact=["val"]),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        cause = _failure_cause(exc)
        if cause is not None:
            raise cause from None
        first = str(exc).strip().splitlines()
        raise JobError(f"training failed: {first[-1] if first else type(exc).__name__}; re-run the same "
                       "command to resume from the last checkpoint") from None
    state = load_state(result.checkpoint)
    if state is None:
        raise JobError(f"training in {c.output.uri} finished without a checkpoint")
    return state
