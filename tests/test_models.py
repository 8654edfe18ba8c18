"""The two models and the model directory (pure torch, no Ray)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mgr.config import PRESETS
from mgr.errors import ConfigError, ModelError
from mgr.audio.features import pad_value
from mgr.models import CNN, CRNN, MODELS, build_model
from mgr.models.layers import time_weights
from mgr.models.modeldir import load_model_dir, save_model_dir


def test_importing_models_does_not_import_ray():
    code = "import sys, mgr.models, mgr.models.modeldir, mgr.training.engine, mgr.pipelines.evaluate, mgr.pipelines.train, mgr.pipelines.train_loop, mgr.reporting.plots; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_paper_cnn_has_published_layer_shapes():
    m = CNN(10, 128, preset="paper")
    assert [tuple(c.weight.shape) for c in m.convs] == [(256, 128, 4), (256, 256, 4), (256, 256, 4)]
    assert [c.stride for c in m.convs] == [(2,), (2,), (2,)]
    assert tuple(m.dense.weight.shape) == (10, 512)
    names = sorted(m.state_dict())
    assert names == sorted(
        [f"convs.{i}.{p}" for i in range(3) for p in ("weight", "bias")] + ["dense.weight", "dense.bias"]
    )
    # paper ignores overrides so published weights always fit
    assert tuple(CNN(8, preset="paper", channels=32).convs[0].weight.shape) == (256, 128, 4)


def test_paper_cnn_matches_a_hand_forward_pass():
    torch.manual_seed(0)
    m = CNN(4, 16, preset="paper").eval()
    x = torch.randn(2, 16, 200)
    h = x
    for conv in m.convs:
        h = torch.nn.functional.max_pool1d(torch.relu(conv(h)), 2)
    feats = torch.cat([h.mean(-1), h.amax(-1)], 1)
    expected = torch.log_softmax(m.dense(feats), -1)
    assert torch.allclose(m(x), expected, atol=1e-6)


@pytest.mark.parametrize("arch,preset", [("cnn", "paper"), ("cnn", "mgr"), ("crnn", "paper"), ("crnn", "mgr")])
@pytest.mark.parametrize("frames", [1, 7, 30, 64, 647, 1000])
def test_output_is_log_probabilities_for_any_length(arch, preset, frames):
    torch.manual_seed(1)
    m = build_model(arch, n_classes=5, n_mels=16, preset=preset, channels=8, hidden=8) if preset == "mgr" \
        else build_model(arch, n_classes=5, n_mels=16, preset=preset)
    m.eval()
    with torch.no_grad():
        out = m(torch.randn(3, 16, frames))
    assert out.shape == (3, 5)
    assert torch.allclose(out.exp().sum(-1), torch.ones(3), atol=1e-5)


def test_weighted_average_equals_hand_case():
    torch.manual_seed(2)
    m = CRNN(3, 8, average="weighted").eval()
    x = torch.randn(2, 8, 120)
    with torch.no_grad():
        steps = m.step_probs(x)
        n = steps.shape[1]
        t = torch.arange(1, n + 1, dtype=torch.float32)
        expected = (steps * t[None, :, None]).sum(1) / t.sum()
        assert torch.allclose(m(x).exp(), expected, atol=1e-5)
        m.average = "mean"
        assert torch.allclose(m(x).exp(), steps.mean(1), atol=1e-5)
    assert n == ((((120 - 3) // 2) - 3) // 2 - 3) // 2


def test_time_weights_sum_to_one_and_grow():
    w = time_weights(4, average="weighted")
    assert torch.allclose(w, torch.tensor([1, 2, 3, 4]) / 10.0)
    assert torch.allclose(time_weights(4, average="mean"), torch.full((4,), 0.25))


def test_crnn_rejects_unknown_average():
    with pytest.raises(ConfigError):
        CRNN(3, 8, average="median")


def test_determinism_with_a_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        m = build_model("crnn", n_classes=4, n_mels=16).eval()
        with torch.no_grad():
            outs.append(m(torch.ones(1, 16, 50)))
    assert torch.equal(outs[0], outs[1])


def test_build_model_rejects_unknown_things():
    assert set(MODELS) == {"cnn", "crnn"}
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("resnet", n_classes=3)
    with pytest.raises(ConfigError, match="unknown cnn options"):
        build_model("cnn", n_classes=3, preset="mgr", wings=2)
    with pytest.raises(ConfigError):
        build_model("cnn", n_classes=3, preset="huge")


def _spec(arch, n_classes, n_mels, **model_config):
    cfg = PRESETS["paper"]
    return {
        "name": f"test-{arch}",
        "architecture": arch,
        "model_config": {"n_classes": n_classes, "n_mels": n_mels, **model_config},
        "feature_config": cfg.to_dict(),
        "genres": [f"g{i}" for i in range(n_classes)],
        "window_frames": 647,
        "pad_value": pad_value(cfg),
        "normalization": {"mean": [1.0] * n_mels, "std": [2.0] * n_mels},
        "metrics": {},
        "provenance": {},
    }


def test_model_dir_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("crnn", n_classes=3, n_mels=128, average="mean")
    spec = _spec("crnn", 3, 128, average="mean")
    spec["average"] = "weighted"
    save_model_dir(str(tmp_path / "m"), model=model, spec=spec)
    assert isinstance(torch.load(tmp_path / "m" / "model.pt", weights_only=True), dict)
    loaded = load_model_dir(str(tmp_path / "m"))
    assert loaded.model.average == "weighted" and not loaded.model.training
    assert loaded.genres == ["g0", "g1", "g2"] and loaded.window_frames == 647
    assert loaded.model_id.startswith("test-crnn-") and len(loaded.model_id) == len("test-crnn-") + 12
    assert json.loads((tmp_path / "m" / "model.json").read_text())["mgr_version"]
    x = np.full((128, 10), 5.0, np.float16)
    assert np.allclose(loaded.normalize(x), 2.0) and loaded.normalize(x).dtype == np.float32
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)


def test_model_dir_on_s3(s3_bucket, s3_endpoint):
    _, bucket = s3_bucket
    model = build_model("cnn", n_classes=4, n_mels=128)
    uri = f"s3://{bucket}/models/cnn"
    save_model_dir(uri, model=model, spec=_spec("cnn", 4, 128, preset="paper"), endpoint_url=s3_endpoint)
    loaded = load_model_dir(uri, endpoint_url=s3_endpoint)
    assert loaded.spec["architecture"] == "cnn" and loaded.feature_config.n_mels == 128


def test_model_dir_errors(tmp_path):
    with pytest.raises(ModelError, match="not a model directory"):
        load_model_dir(str(tmp_path / "nothing"))
    model = build_model("cnn", n_classes=4, n_mels=128)
    save_model_dir(str(tmp_path / "m"), model=model, spec=_spec("cnn", 4, 128))
    spec = json.loads((tmp_path / "m" / "model.json").read_text())
    spec["model_config"]["n_classes"] = 5
    spec["genres"].append("g4")
    (tmp_path / "m" / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ModelError, match="does not match"):
        load_model_dir(str(tmp_path / "m"))
    (tmp_path / "m" / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="not a loadable"):
        load_model_dir(str(tmp_path / "m"))
