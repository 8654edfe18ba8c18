"""`mgr import-keras`: Keras 2 h5 files of Model 2 → mgr model directories that reproduce Keras.

Converted models are checked against an independent numpy forward pass of the Keras layers
(tests/keras_reference.py) on random h5 files of the published layout, and, where
../shared is present, on the author's published GTZAN weights and 13 real recordings.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mgr.cli import main
from mgr.models.modeldir import load_model_dir
from tests import keras_reference as kr

REPO = Path(__file__).resolve().parents[1]
SHARED = next((p for p in (REPO.parent / "shared", Path("/work/shared")) if (p / "data").is_dir()), None)
REAL_H5 = SHARED / "data" / "weights" / "paper_gtzan_cnn.h5" if SHARED else None
MUSIC = SHARED / "data" / "music" if SHARED else None
# top genre of the first 647 frames, per ../shared/data/README.md
EXPECTED_TOP = {
    "muldjord__armygeddon.mp3": "country", "muldjord__chaos_god.mp3": "metal",
    "muldjord__internal_degeneration.mp3": "metal", "muldjord__mutilated_mime.mp3": "rock",
    "sectoid__escape_from_chaosland.mp3": "rock", "sectoid__feelings.mp3": "country",
    "sectoid__metal_madness.mp3": "rock", "sectoid__war_of_freedom.mp3": "metal",
    "brahms_hungarian_dance5.ogg": "classical", "tchaikovsky_sugar_plum.ogg": "classical",
    "macleod_vibe_ace.ogg": "reggae", "fats_waller_aint_misbehavin.ogg": "classical",
    "karissa_hobbs_lets_go_fishin.ogg": "country",
}
PROB_ATOL = 1e-5  # float32 vs the float64 reference


def torch_probs(model_dir, x: np.ndarray) -> np.ndarray:
    """Probabilities ``[batch, n_classes]`` of the loaded model for ``x`` ``[batch, n_mels, T]``."""
    lm = load_model_dir(str(model_dir))
    with torch.no_grad():
        return lm.model(torch.from_numpy(lm.normalize(x))).exp().double().numpy()


def logmel_like(rng, batch: int, frames: int) -> np.ndarray:
    """Random inputs on the scale of ln(mel power): about -14 (silence) to +5."""
    return np.clip(rng.normal(-4.0, 4.0, size=(batch, 128, frames)), -13.8, 6.0).astype(np.float32)


def run_cli(*args) -> int:
    return main(["import-keras", *map(str, args)])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_classes,layout", [(10, "model"), (2, "model"), (8, "weights+json"),
                                              (16, "weights+yaml"), (10, "weights")])
def test_random_weights_match_numpy_reference(tmp_path, n_classes, layout, capsys):
    weights = kr.random_weights(n_classes, seed=n_classes)
    config = kr.model2_config(n_classes)
    h5 = tmp_path / "net.h5"
    kr.write_keras_h5(h5, config, weights, layout="model" if layout == "model" else "weights")
    if layout == "weights+json":
        (tmp_path / "net.json").write_text(kr.keras_json(config))
    elif layout == "weights+yaml":
        yaml = pytest.importorskip("yaml")
        (tmp_path / "net.keras.yaml").write_text(yaml.safe_dump(json.loads(kr.keras_json(config))))
    genres = [f"g{i}" for i in range(n_classes)]
    extra = [] if n_classes == 10 else ["--genres", ",".join(genres)]
    out = tmp_path / "model"
    assert run_cli(h5, out, *extra) == 0
    err = capsys.readouterr().err
    assert ("warning" in err) == (layout == "weights")

    spec = json.loads((out / "model.json").read_text())
    assert spec["architecture"] == "cnn" and spec["model_config"]["preset"] == "paper"
    assert spec["genres"] == (kr.GTZAN if n_classes == 10 else genres)
    assert spec["window_frames"] == 647 and spec["normalization"] is None
    assert spec["pad_value"] == pytest.approx(np.log(1e-6), abs=1e-6)
    assert spec["feature_config"]["preset"] == "paper" and spec["feature_config"]["hop_length"] == 1024
    prov = spec["provenance"]
    assert prov["source"] == "net.h5" and prov["keras_version"] == "2.0.9" and prov["backend"] == "tensorflow"
    assert prov["method"] == "converted by mgr import-keras"
    import hashlib
    assert prov["sha256"] == hashlib.sha256(h5.read_bytes()).hexdigest()

    rng = np.random.default_rng(100 + n_classes)
    worst = 0.0
    for frames in (647, kr.min_frames(), 300, 1293):
        x = logmel_like(rng, 3, frames)
        got = torch_probs(out, x)
        ref = np.stack([kr.model2_probs(clip.T, weights) for clip in x])
        np.testing.assert_allclose(got, ref, rtol=0, atol=PROB_ATOL)
        assert (got.argmax(1) == ref.argmax(1)).all()
        worst = max(worst, float(np.abs(got - ref).max()))
    with capsys.disabled():
        print(f"\nn_classes={n_classes} layout={layout} max|Δp|={worst:.2e}")


def test_concatenation_order_gmp_first_is_honoured(tmp_path):
    weights = kr.random_weights(10, seed=3)
    kr.write_keras_h5(tmp_path / "gmp_first.h5", kr.model2_config(10, gap_first=False), weights)
    assert run_cli(tmp_path / "gmp_first.h5", tmp_path / "m") == 0
    x = logmel_like(np.random.default_rng(1), 2, 647)
    ref = np.stack([kr.model2_probs(c.T, weights, gap_first=False) for c in x])
    np.testing.assert_allclose(torch_probs(tmp_path / "m", x), ref, rtol=0, atol=PROB_ATOL)


def _fused(config: dict) -> dict:
    """Model 2 written with ``Conv1D(activation="relu")`` and ``Dense(activation="softmax")``."""
    config = copy.deepcopy(config)
    layers = config["config"]["layers"]
    acts = {l["name"]: l["inbound_nodes"][0][0][0] for l in layers if l["class_name"] == "Activation"}
    for l in layers:
        if l["name"] in acts.values():
            l["config"]["activation"] = "softmax" if l["class_name"] == "Dense" else "relu"
        for node in l["inbound_nodes"]:
            for src in node:
                src[0] = acts.get(src[0], src[0])
    config["config"]["layers"] = [l for l in layers if l["name"] not in acts]
    out = config["config"]["output_layers"][0]
    out[0] = acts.get(out[0], out[0])
    return config


@pytest.mark.parametrize("layout", ["model", "weights"])
def test_fused_activations_are_recognised(tmp_path, layout):
    weights = kr.random_weights(10, seed=5)
    kr.write_keras_h5(tmp_path / "f.h5", _fused(kr.model2_config(10)), weights, layout=layout)
    assert run_cli(tmp_path / "f.h5", tmp_path / "m") == 0
    x = logmel_like(np.random.default_rng(4), 2, 647)
    ref = np.stack([kr.model2_probs(c.T, weights) for c in x])
    np.testing.assert_allclose(torch_probs(tmp_path / "m", x), ref, rtol=0, atol=PROB_ATOL)


def _edit(config: dict, name: str, **changes) -> dict:
    config = copy.deepcopy(config)
    for layer in config["config"]["layers"]:
        if layer["name"] == name:
            layer["config"].update(changes)
    return config


def _insert_after(config: dict, after: str, layer: dict) -> dict:
    """Insert ``layer`` (whose inbound is ``after``) and rewire ``after``'s consumers to it."""
    config = copy.deepcopy(config)
    layers = config["config"]["layers"]
    for other in layers:
        for node in other["inbound_nodes"]:
            for src in node:
                if src[0] == after:
                    src[0] = layer["name"]
    idx = next(i for i, l in enumerate(layers) if l["name"] == after)
    layers.insert(idx + 1, layer)
    return config


def _bad_configs():
    base = kr.model2_config(10)
    bn = kr._layer("BatchNormalization", "batch_normalization_1", ["conv1d_2"], axis=-1)
    conv4 = kr.conv_layer("conv1d_4", "max_pooling1d_3")
    hidden = kr._layer("Dense", "dense_0", ["dropout_1"], units=64, activation="relu", use_bias=True)
    no_gmp = copy.deepcopy(base)
    no_gmp["config"]["layers"] = [l for l in no_gmp["config"]["layers"]
                                  if l["name"] not in ("global_max_pooling1d_1", "concatenate_1")]
    for l in no_gmp["config"]["layers"]:
        if l["name"] == "dropout_1":
            l["inbound_nodes"] = [[["global_average_pooling1d_1", 0, 0, {}]]]
    return {
        "kernel 5": (_edit(base, "conv1d_2", kernel_size=[5]), "conv1d_2", "kernel_size"),
        "stride 1": (_edit(base, "conv1d_1", strides=[1]), "conv1d_1", "strides"),
        "tanh": (_edit(base, "activation_3", activation="tanh"), "activation_3", "ReLU"),
        "pool 3": (_edit(base, "max_pooling1d_2", pool_size=[3], strides=[3]), "max_pooling1d_2", "pool_size"),
        "128 filters": (_edit(base, "conv1d_3", filters=128), "conv1d_3", "filters"),
        "batch norm": (_insert_after(base, "conv1d_2", bn), "batch_normalization_1", "BatchNormalization"),
        "4th conv": (_insert_after(base, "max_pooling1d_3", conv4), "conv1d_4", "Conv1D"),
        "hidden dense": (_insert_after(base, "dropout_1", hidden), "dense_0", "Dense"),
        "GAP only": (no_gmp, "global_average_pooling1d_1", "Concatenate"),
        "no softmax": (_edit(base, "activation_4", activation="sigmoid"), "activation_4", "softmax"),
    }


@pytest.mark.parametrize("case", sorted(_bad_configs()))
def test_other_architectures_are_refused(tmp_path, capsys, case):
    config, where, what = _bad_configs()[case]
    weights = kr.random_weights(10, seed=1)
    kr.write_keras_h5(tmp_path / "other.h5", config, weights)
    assert run_cli(tmp_path / "other.h5", tmp_path / "m") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "not the paper's Model 2" in err and where in err and what in err, err
    assert not (tmp_path / "m").exists()


def test_weights_only_file_checked_against_its_sidecar(tmp_path, capsys):
    """A weights-only file takes its architecture from the file Keras wrote beside it."""
    kr.write_keras_h5(tmp_path / "w.h5", kr.model2_config(10), kr.random_weights(10), layout="weights")
    (tmp_path / "w.json").write_text(kr.keras_json(_edit(kr.model2_config(10), "conv1d_1", strides=[1])))
    assert run_cli(tmp_path / "w.h5", tmp_path / "m") == 2
    assert "conv1d_1" in capsys.readouterr().err
    # --config wins over the sidecar
    (tmp_path / "good.json").write_text(kr.keras_json(kr.model2_config(10)))
    assert run_cli(tmp_path / "w.h5", tmp_path / "m", "--config", tmp_path / "good.json") == 0
    assert json.loads((tmp_path / "m" / "model.json").read_text())["provenance"]["architecture_from"] == "good.json"


def test_kernel_shapes_must_match_the_config(tmp_path, capsys):
    weights = kr.random_weights(10, kernel=5)
    kr.write_keras_h5(tmp_path / "x.h5", kr.model2_config(10), weights)
    assert run_cli(tmp_path / "x.h5", tmp_path / "m") == 2
    assert "conv1d_1" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--genres", "a,b,c"], "names 3 genres but the model has 10 classes"),
    (["--genres", "a,b,c,d,e,f,g,h,i,a"], "distinct"),
])
def test_wrong_vocabulary_is_refused(tmp_path, capsys, args, message):
    kr.write_keras_h5(tmp_path / "x.h5", kr.model2_config(10), kr.random_weights(10))
    assert run_cli(tmp_path / "x.h5", tmp_path / "m", *args) == 2
    assert message in capsys.readouterr().err


def test_non_gtzan_size_needs_genres(tmp_path, capsys):
    kr.write_keras_h5(tmp_path / "x.h5", kr.model2_config(8), kr.random_weights(8))
    assert run_cli(tmp_path / "x.h5", tmp_path / "m") == 2
    err = capsys.readouterr().err
    assert "8 classes" in err and "--genres" in err
    assert not (tmp_path / "m").exists()


def test_not_hdf5_missing_and_existing_output(tmp_path, capsys):
    (tmp_path / "a.h5").write_text("not hdf5 at all")
    assert run_cli(tmp_path / "a.h5", tmp_path / "m") == 2
    assert "not an HDF5 file" in capsys.readouterr().err
    assert run_cli(tmp_path / "missing.h5", tmp_path / "m") == 2
    assert "does not exist" in capsys.readouterr().err
    import zipfile
    with zipfile.ZipFile(tmp_path / "k3.keras", "w") as z:
        z.writestr("config.json", "{}")
    assert run_cli(tmp_path / "k3.keras", tmp_path / "m") == 2
    assert "Keras 3" in capsys.readouterr().err
    kr.write_keras_h5(tmp_path / "x.h5", kr.model2_config(10), kr.random_weights(10))
    assert run_cli(tmp_path / "x.h5", tmp_path / "m", "--name", "mine") == 0
    assert load_model_dir(str(tmp_path / "m")).model_id.startswith("mine-")
    assert run_cli(tmp_path / "x.h5", tmp_path / "m") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli(tmp_path / "x.h5", tmp_path / "m", "--overwrite") == 0


def test_s3_in_and_out(tmp_path, s3_bucket, s3_endpoint):
    fs, bucket = s3_bucket
    weights = kr.random_weights(10, seed=7)
    kr.write_keras_h5(tmp_path / "x.h5", kr.model2_config(10), weights, layout="weights")
    fs.put(str(tmp_path / "x.h5"), f"{bucket}/in/x.h5")
    fs.pipe(f"{bucket}/in/x.keras.json", kr.keras_json(kr.model2_config(10)).encode())
    out = f"s3://{bucket}/models/x"
    assert run_cli(f"s3://{bucket}/in/x.h5", out, "--endpoint-url", s3_endpoint) == 0
    lm = load_model_dir(out, endpoint_url=s3_endpoint)
    assert lm.spec["provenance"]["architecture_from"] == "x.keras.json"
    x = logmel_like(np.random.default_rng(2), 2, 647)
    with torch.no_grad():
        got = lm.model(torch.from_numpy(x)).exp().double().numpy()
    ref = np.stack([kr.model2_probs(c.T, weights) for c in x])
    np.testing.assert_allclose(got, ref, rtol=0, atol=PROB_ATOL)


def test_import_does_not_pull_ray():
    code = "import sys, mgr.interop.keras.importer, mgr.commands.import_keras; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ)).returncode == 0


# ---------------------------------------------------------------- the published weights
needs_real = pytest.mark.skipif(REAL_H5 is None or not REAL_H5.is_file() or MUSIC is None or not MUSIC.is_dir(),
                                reason="../shared/data (published weights and music) not present")
EXCERPT_S = 30.5  # 657 frames: one 647-frame window for a labeler with H = W/2


@pytest.fixture(scope="module")
def real_excerpts():
    """The first 30.5 s of each real recording, decoded at 22050 Hz mono: ``{name: y}``."""
    from mgr.audio.decode import decode

    out = {}
    for name in sorted(EXPECTED_TOP):
        y, sr, _ = decode(str(MUSIC / name), sr=22050, mono=True, name=name)
        out[name] = y[: int(EXCERPT_S * sr)]
    return out


@pytest.fixture(scope="module")
def paper_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper") / "model"
    assert run_cli(REAL_H5, out) == 0
    return out


def reference_inputs(excerpts: dict) -> np.ndarray:
    """``[13, 128, 647]``: ln mel power of the first 647 frames, as the reference code computed it."""
    from mgr.config import PRESETS
    from mgr.audio.features import log_mel, pad_value
    from mgr.inference.windows import fit_frames

    cfg = PRESETS["paper"]
    return np.stack([fit_frames(log_mel(y, cfg=cfg), 647, pad=pad_value(cfg)) for y in excerpts.values()])


@needs_real
@pytest.mark.timeout(300)
def test_published_gtzan_model_reproduces_reference_labels(tmp_path, capsys, real_excerpts, paper_model):
    lm = load_model_dir(str(paper_model))
    assert lm.genres == kr.GTZAN and lm.window_frames == 647
    assert lm.spec["provenance"]["keras_version"] == "2.0.9"
    from mgr.config import PRESETS
    assert lm.feature_config == PRESETS["paper"]
    names = list(real_excerpts)
    x = reference_inputs(real_excerpts)
    with torch.no_grad():
        got = lm.model(torch.from_numpy(lm.normalize(x))).exp().double().numpy()
    weights = kr.real_weights(REAL_H5)
    ref = np.stack([kr.model2_probs(clip.T, weights) for clip in x])
    diff = float(np.abs(got - ref).max())
    with capsys.disabled():
        print(f"\npublished model: max|Δp| torch vs numpy reference on 13 real clips = {diff:.2e}")
    np.testing.assert_allclose(got, ref, rtol=0, atol=PROB_ATOL)
    top = {n: lm.genres[i] for n, i in zip(names, got.argmax(1))}
    assert top == EXPECTED_TOP
    assert {n: kr.GTZAN[i] for n, i in zip(names, ref.argmax(1))} == EXPECTED_TOP
    # "armygeddon country (metal 0.45 second)"
    army = got[names.index("muldjord__armygeddon.mp3")]
    assert kr.GTZAN[int(np.argsort(army)[-2])] == "metal" and army[kr.GTZAN.index("metal")] == pytest.approx(0.45, abs=0.01)

    # without its architecture file, the same weights import (with a warning) to the same model
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "w.h5").write_bytes(REAL_H5.read_bytes())
    assert run_cli(tmp_path / "bare" / "w.h5", tmp_path / "bare_model") == 0
    assert "weights only" in capsys.readouterr().err
    a = torch.load(paper_model / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "bare_model" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@needs_real
@pytest.mark.timeout(300)
@pytest.mark.skipif(importlib.util.find_spec("mgr.commands.label") is None, reason="mgr label not built yet")
def test_mgr_label_with_imported_model_gives_reference_results(ray_local, tmp_path, capsys, real_excerpts,
                                                               paper_model):
    """A 30.5-s clip is one window (its first 647 frames): `mgr label` must give the reference's output."""
    import pyarrow.parquet as pq
    import soundfile as sf

    catalog = tmp_path / "catalog"
    catalog.mkdir()
    for name, y in real_excerpts.items():
        sf.write(catalog / (Path(name).stem + ".wav"), y, 22050, subtype="FLOAT")
    assert main(["label", str(catalog), str(tmp_path / "labels"), "--model", str(paper_model)]) == 0
    rows = {Path(r["uri"]).stem: r for r in pq.read_table(tmp_path / "labels").to_pylist()}
    assert len(rows) == len(real_excerpts)
    weights = kr.real_weights(REAL_H5)
    ref = np.stack([kr.model2_probs(c.T, weights) for c in reference_inputs(real_excerpts)])
    worst = 0.0
    for name, r in zip(real_excerpts, ref):
        row = rows[Path(name).stem]
        assert row["genre"] == EXPECTED_TOP[name], name
        assert len(row["segments"]) == 1
        worst = max(worst, float(np.abs(np.asarray(row["probs"], dtype=np.float64) - r).max()))
    with capsys.disabled():
        print(f"\nmgr label with the imported model: max|Δp| vs numpy reference on 13 real clips = {worst:.2e}")
    assert worst < PROB_ATOL
