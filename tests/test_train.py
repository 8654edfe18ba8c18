"""Training on a real local Ray (2 workers): accuracy, resume, worker failure, model dir, errors."""

from __future__ import annotations

import json
import os

import pytest

from mgr.cli import main
from mgr.errors import ConfigError
from mgr.datasets.featureset import MANIFEST_NAME
from mgr.io.location import Location
from mgr.models.modeldir import load_model_dir
from mgr.pipelines.train_config import TrainJobConfig
from tests.featgen import write_features

SMALL = {"channels": 32, "hidden": 32}
COMMON = dict(preset="mgr", workers=2, crop_seconds=1.0, batch_size=16, model_options=SMALL, verbose=True)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("features") / "feat")
    write_features(root, n_genres=4)
    return root


@pytest.fixture(scope="module")
def cnn_run(ray_local, features, tmp_path_factory):
    from mgr.pipelines.train import train

    out = str(tmp_path_factory.mktemp("cnn") / "model")
    summary = train(TrainJobConfig(features, out, model="cnn", epochs=10, **COMMON))
    return out, summary


def _history(out):
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.timeout(480)
def test_cnn_trains_to_high_accuracy_and_writes_the_model_dir(cnn_run, features, capsys):
    out, summary = cnn_run
    assert summary["test_accuracy"] >= 0.9
    for name in ("model.pt", "model.json", "metrics.jsonl", "report.json", "learning_curves.png",
                 "confusion_matrix.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    history = _history(out)
    assert [h["epoch"] for h in history] == list(range(1, 11))
    assert all(h["workers"] == 2 and h["samples"] == 64 for h in history)  # error rows skipped
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["accuracy"] == summary["test_accuracy"]
    assert set(report["per_genre"]) == {f"genre{i}" for i in range(4)}
    assert sum(map(sum, report["confusion"])) == 20
    loaded = load_model_dir(out)
    spec = loaded.spec
    assert spec["architecture"] == "cnn" and spec["window_frames"] == 22 and len(spec["normalization"]["mean"]) == 32
    assert spec["metrics"]["best_epoch"] == summary["best_epoch"]
    assert spec["feature_config"]["preset"] == "synthetic"
    capsys.readouterr()
    assert main(["evaluate", out, features, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert main(["evaluate", out, features, "--split", "val"]) == 0
    text = capsys.readouterr().out
    assert "confusion" in text and "genre3" in text and "accuracy" in text


@pytest.mark.timeout(480)
def test_rerun_resumes_from_the_latest_checkpoint(cnn_run, features):
    from mgr.pipelines.train import train

    out, _ = cnn_run
    before = _history(out)
    summary = train(TrainJobConfig(features, out, model="cnn", epochs=12, **COMMON))
    after = _history(out)
    assert summary["epochs_trained"] == 12
    assert after[:10] == before and [h["epoch"] for h in after[10:]] == [11, 12]


def test_mismatched_rerun_and_features_are_clear_errors(cnn_run, features, tmp_path, capsys):
    out, _ = cnn_run
    from mgr.pipelines.train import train

    with pytest.raises(ConfigError, match="differs in"):
        train(TrainJobConfig(features, out, model="crnn", epochs=1, **COMMON))
    other = str(tmp_path / "other")
    write_features(other, n_genres=5)
    code = main(["evaluate", out, other])
    err = capsys.readouterr().err
    assert code == 2 and "genre4" in err and "does not know" in err and "Traceback" not in err
    manifest = json.load(open(os.path.join(other, MANIFEST_NAME)))
    manifest["feature_config"]["preset"] = "paper"
    json.dump(manifest, open(os.path.join(other, MANIFEST_NAME), "w"))
    code = main(["evaluate", out, other])
    err = capsys.readouterr().err
    assert code == 2 and "re-extract with --preset synthetic" in err
    code = main(["train", features, str(tmp_path / "x"), "--model", "cnn", "--lr", "-1"])
    assert code == 2 and "learning rate" in capsys.readouterr().err


@pytest.mark.timeout(600)
def test_crnn_on_s3_survives_a_killed_worker(ray_local, features, tmp_path, s3_bucket, s3_endpoint, capsys):
    from mgr.pipelines.train import train

    _, bucket = s3_bucket
    out = f"s3://{bucket}/models/crnn"
    marker = str(tmp_path / "killed")
    summary = train(TrainJobConfig(features, Location(out, endpoint_url=s3_endpoint), model="crnn", epochs=10,
                                   inject_failure={"epoch": 3, "rank": 1, "marker": marker}, **COMMON))
    assert os.path.exists(marker)  # the worker did die at epoch 4
    assert summary["epochs_trained"] == 10 and summary["test_accuracy"] >= 0.9
    loaded = load_model_dir(out, endpoint_url=s3_endpoint)
    assert loaded.spec["average"] == "weighted" and loaded.model.average == "weighted"
    fs, _ = s3_bucket
    history = [json.loads(x) for x in fs.cat(f"{bucket}/models/crnn/metrics.jsonl").decode().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, 11))
    assert fs.exists(f"{bucket}/models/crnn/ray_train")
    capsys.readouterr()
    assert main(["evaluate", out, features, "--json", "--endpoint-url", s3_endpoint]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"accuracy", "accuracy_weighted", "accuracy_mean"} <= set(result)
    assert result["accuracy"] == result["accuracy_weighted"] >= 0.9
