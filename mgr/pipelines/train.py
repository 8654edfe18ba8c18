"""Data-parallel training on Ray Train: features dataset in, model directory out.

:func:`train` reads the features dataset (rows with an ``error`` skipped), computes the
per-band normalisation from the train split, feeds the train split to the workers through
Ray Data, runs :func:`mgr.pipelines.train_loop.train_loop_per_worker` under a ``TorchTrainer``
with checkpoints in ``OUTPUT/ray_train`` (local or s3), and writes the model directory:
``model.pt``, ``model.json``, ``metrics.jsonl``, ``report.json`` and the plots.
Re-running the same command on the same OUTPUT resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from mgr.training import engine

from mgr.io import storage
from mgr.errors import ConfigError, JobError, MgrError, StorageError, user_error
from mgr.audio.features import pad_value
from mgr.datasets.featureset import feature_config, read_manifest, read_table, to_arrays

__all__ = ["RUN_NAME", "RUN_FILE", "train"]

RUN_NAME = "ray_train"
RUN_FILE = "run.json"
#: run.json keys that must not change when an OUTPUT is trained again (resumed)
FIXED_KEYS = ("architecture", "preset", "genres", "feature_config", "window_frames", "crop",
              "average", "model_options")


def _split_table(uri: str, split: str, genres: list[str], *, endpoint_url):
    table = read_table(uri, columns=["track_id", "label", "n_mels", "n_frames", "mel"], splits=[split],
                       ok_only=True, endpoint_url=endpoint_url)
    labels = table.column("label").to_pylist()
    keep = [i for i, lab in enumerate(labels) if lab is not None]
    table = table.take(keep)
    index = {g: i for i, g in enumerate(genres)}
    unknown = sorted({lab for lab in table.column("label").to_pylist() if lab not in index})
    if unknown:
        raise ConfigError(f"{split} split has labels {unknown} outside the vocabulary of the features dataset {genres}")
    y = np.array([index[lab] for lab in table.column("label").to_pylist()], dtype=np.int64)
    return table, y


def _arrow_rows(table, y: np.ndarray, *, blocks: int):
    import pyarrow as pa

    rows = pa.table({
        "idx": pa.array(np.arange(len(y), dtype=np.int64)),
        "mel": table.column("mel"),
        "n_frames": table.column("n_frames"),
        "y": pa.array(y),
    })
    n = max(1, min(blocks, len(y)))
    step = -(-len(y) // n)
    return [rows.slice(lo, step) for lo in range(0, len(y), step)]


def _check_run(output_uri: str, run: dict, *, endpoint_url) -> dict:
    """Write ``run.json`` on a first run; on a re-run check it matches and reuse its statistics."""
    fs, path = storage.filesystem(storage.join(output_uri, RUN_FILE), endpoint_url=endpoint_url)
    try:
        if fs.exists(path):
            with fs.open(path, "rb") as fh:
                old = json.loads(fh.read())
            changed = [k for k in FIXED_KEYS if old.get(k) != run.get(k)]
            if changed:
                raise ConfigError(
                    f"{output_uri} already holds a {old.get('architecture')}/{old.get('preset')} training run "
                    f"that differs in {changed}; use a new OUTPUT or the same options to resume it")
            run["normalization"] = old["normalization"]
            return run
        if not storage.is_remote(output_uri):
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as fh:
            fh.write(json.dumps(run, indent=2, sort_keys=True).encode())
    except OSError as exc:
        raise StorageError(f"cannot use OUTPUT {output_uri}: {exc}") from None
    return run


def _storage(output_uri: str, *, endpoint_url):
    """``(storage_path, storage_filesystem)`` for RunConfig (pyarrow over fsspec for s3)."""
    if not storage.is_remote(output_uri):
        return storage.filesystem(output_uri)[1], None
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(output_uri, endpoint_url=endpoint_url)
    return path, pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _failure_cause(exc: BaseException) -> MgrError | None:
    failures = getattr(exc, "worker_failures", None) or {}
    for err in list(failures.values()) + [getattr(exc, "controller_failure", None), exc]:
        if isinstance(err, BaseException):
            found = user_error(err)
            if found is not None:
                return found
    return None


def train(
    features_uri: str,
    output_uri: str,
    *,
    model: str = "cnn",
    preset: str = "mgr",
    workers: int = 2,
    use_gpu: bool = False,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    crop_seconds: float | None = None,
    average: str = "weighted",
    patience: int | None = None,
    seed: int = 0,
    max_failures: int = 3,
    address: str | None = None,
    num_cpus: int | None = None,
    endpoint_url: str | None = None,
    model_options: dict | None = None,
    inject_failure: dict | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train ``model`` on a features dataset with Ray Train and write the model directory.

    Parameters
    ----------
    features_uri, output_uri : str
        Features dataset (``mgr extract`` OUTPUT) and model directory (local or ``s3://``).
    model : {"cnn", "crnn"}
    preset : {"paper", "mgr"}
        ``paper`` trains as the paper (whole clips, its optimizer and batch size); ``mgr``
        adds random crops, crop voting, AdamW with a cosine schedule, label smoothing.
    workers : int
        Ray Train workers (DDP replicas), one CPU (or GPU with ``use_gpu``) each.
    epochs, batch_size, lr, crop_seconds, patience : optional
        Override the recipe; ``batch_size`` is global (split across workers).
    average : {"weighted", "mean"}
        crnn step averaging.
    inject_failure : dict, optional
        Test hook ``{"epoch", "rank", "marker"}``: that worker exits once at that epoch.

    Returns
    -------
    dict
        ``output``, ``epochs_trained``, ``best_epoch``, ``best_val_accuracy``, ``test``
        (the :func:`mgr.pipelines.evaluate.evaluate` result or None), ``seconds``.
    """
    from mgr.pipelines.runtime import ray_session

    t0 = time.perf_counter()
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    manifest = read_manifest(features_uri, endpoint_url=endpoint_url)
    fcfg = feature_config(manifest)
    genres = list(manifest.get("genres") or [])
    if len(genres) < 2:
        raise ConfigError(f"{features_uri} has {len(genres)} genres in its manifest; training needs labels "
                          "for at least 2 (extract with --labels)")
    recipe = engine.resolve_recipe(model, preset=preset, feature_config=fcfg, crop_seconds=crop_seconds,
                                   epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed,
                                   average=average, model_options=dict(model_options or {}))
    model_config = recipe.model_config(n_classes=len(genres), n_mels=fcfg.n_mels)
    from mgr.models import build_model

    build_model(model, **model_config)  # fail early on a bad configuration
    train_t, y_train = _split_table(features_uri, "train", genres, endpoint_url=endpoint_url)
    val_t, y_val = _split_table(features_uri, "val", genres, endpoint_url=endpoint_url)
    if len(y_train) == 0 or len(y_val) == 0:
        raise ConfigError(f"{features_uri} needs labeled rows in both the train and val splits "
                          f"(found {len(y_train)} and {len(y_val)})")
    bad = set(train_t.column("n_mels").to_pylist()) - {fcfg.n_mels}
    if bad:
        raise ConfigError(f"features have n_mels {sorted(bad)} but its manifest says {fcfg.n_mels}")
    run = {
        "architecture": model, "preset": preset, "genres": genres, "feature_config": fcfg.to_dict(),
        "window_frames": recipe.window_frames, "crop": recipe.crop, "average": average if model == "crnn" else None,
        "model_options": dict(model_options or {}), "features": features_uri,
    }
    run["normalization"] = None
    fs_out, out_path = storage.filesystem(storage.join(output_uri, RUN_FILE), endpoint_url=endpoint_url)
    if not fs_out.exists(out_path):
        mean, std = engine.band_stats(to_arrays(train_t), n_mels=fcfg.n_mels)
        run["normalization"] = {"mean": mean.tolist(), "std": std.tolist()}
    run = _check_run(output_uri, run, endpoint_url=endpoint_url)
    cfg = {
        "recipe": recipe.to_dict(), "model_config": model_config, "n_mels": fcfg.n_mels,
        "pad_value": pad_value(fcfg), "mean": run["normalization"]["mean"], "std": run["normalization"]["std"],
        "n_train": int(len(y_train)), "inject_failure": inject_failure,
    }
    if verbose:
        print(f"mgr train: {model}/{preset} on {len(y_train)} train, {len(y_val)} val clips, "
              f"{len(genres)} genres, window {recipe.window_frames} frames, {workers} worker(s)"
              f"{' on GPU' if use_gpu else ''}", flush=True)
    with ray_session(address=address, num_cpus=num_cpus, endpoint_url=endpoint_url):
        state = _fit(cfg, train_t, y_train, val_t, y_val, output_uri=output_uri, workers=workers,
                     use_gpu=use_gpu, max_failures=max_failures, endpoint_url=endpoint_url, address=address)
    from mgr.pipelines.train_export import export

    summary = export(state, output_uri=output_uri, features_uri=features_uri, recipe=recipe, run=run,
                     model_config=model_config, fcfg=fcfg, endpoint_url=endpoint_url, workers=workers,
                     use_gpu=use_gpu, verbose=verbose)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _fit(cfg, train_t, y_train, val_t, y_val, *, output_uri, workers, use_gpu, max_failures, endpoint_url,
         address) -> dict:
    """Run the TorchTrainer; return the training state of its latest checkpoint."""
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from mgr.pipelines.train_loop import load_state, train_loop_per_worker

    if use_gpu and not address and ray.cluster_resources().get("GPU", 0) < workers:
        raise ConfigError(f"--gpu asks for {workers} GPU worker(s) but this Ray has "
                          f"{int(ray.cluster_resources().get('GPU', 0))} GPU(s)")
    data_ctx = ray.data.DataContext.get_current()
    data_ctx.print_on_execution_start = False  # one console line per epoch, not per dataset pass
    data_ctx.enable_progress_bars = False
    train_ds = ray.data.from_arrow(_arrow_rows(train_t, y_train, blocks=8 * workers)).randomize_block_order()
    val_ds = ray.data.from_arrow(_arrow_rows(val_t, y_val, blocks=2 * workers))
    storage_path, storage_fs = _storage(output_uri, endpoint_url=endpoint_url)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="val_accuracy", checkpoint_score_order="max"),
        ),
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
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
        raise JobError(f"training in {output_uri} finished without a checkpoint")
    return state
