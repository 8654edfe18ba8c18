"""Named models (`mgr models list|pull|show`, `--model NAME`), offline: the published weights
are served from a copy on a local HTTP server (127.0.0.1) and never fetched from the internet.

The pulled model is compared with tests/keras_reference.py (an independent numpy forward
pass of the Keras layers), never with itself.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mgr.cli import main
from mgr.models.modeldir import load_model_dir
from mgr.registry import CATALOG, cache_root, resolve_model
from mgr.registry.catalog import RegistryError
from tests import keras_reference as kr
from tests.test_keras_import import EXPECTED_TOP, MUSIC, PROB_ATOL, REAL_H5, logmel_like, reference_inputs

REPO = Path(__file__).resolve().parents[1]
PINNED = CATALOG["paper-gtzan"].sha256
needs_weights = pytest.mark.skipif(REAL_H5 is None or not REAL_H5.is_file(),
                                   reason="../shared/data/weights (the published weights) not present")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A local HTTP server on 127.0.0.1 serving a copy of the weights and a corrupted copy."""
    if REAL_H5 is None or not REAL_H5.is_file():
        pytest.skip("../shared/data/weights not present")
    root = tmp_path_factory.mktemp("www")
    data = REAL_H5.read_bytes()  # read only: /work/shared is never written
    (root / "weights.h5").write_bytes(data)
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x01  # one byte changed
    (root / "corrupt.h5").write_bytes(bytes(bad))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{server.server_address[1]}", "root": root,
           "bad_sha": hashlib.sha256(bytes(bad)).hexdigest()}
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def pulled_home(served, tmp_path_factory):
    """An MGR_HOME where paper-gtzan was pulled once from the local server (for the slower tests)."""
    home = tmp_path_factory.mktemp("mgr_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MGR_HOME", str(home))
        assert main(["models", "pull", "paper-gtzan", "--from", f"{served['url']}/weights.h5"]) == 0
    return home


def _entries(home: Path) -> list[str]:
    return sorted(os.listdir(home)) if home.exists() else []


def _reference_check(model_dir) -> None:
    """The model's probabilities equal the numpy reference of the published weights."""
    lm = load_model_dir(str(model_dir))
    x = logmel_like(np.random.default_rng(0), 3, 647)
    with torch.no_grad():
        got = lm.model(torch.from_numpy(lm.normalize(x))).exp().double().numpy()
    weights = kr.real_weights(REAL_H5)
    ref = np.stack([kr.model2_probs(clip.T, weights) for clip in x])
    np.testing.assert_allclose(got, ref, rtol=0, atol=PROB_ATOL)


@needs_weights
@pytest.mark.timeout(180)
def test_pull_downloads_verifies_imports_and_caches(served, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("MGR_HOME", str(home))
    # the catalog's own URL, pointed at the local server: the path a user's pull takes
    monkeypatch.setitem(CATALOG, "paper-gtzan",
                        dataclasses.replace(CATALOG["paper-gtzan"], source_url=f"{served['url']}/weights.h5"))
    assert cache_root() == home
    assert main(["models", "pull", "paper-gtzan"]) == 0
    out = capsys.readouterr().out
    assert PINNED in out and "verified" in out
    assert _entries(home) == ["paper-gtzan"]  # no temporary folder or scratch file left
    model_dir = home / "paper-gtzan"
    assert sorted(os.listdir(model_dir)) == ["model.json", "model.pt"]
    spec = json.loads((model_dir / "model.json").read_text())
    assert spec["name"] == "paper-gtzan" and spec["genres"] == kr.GTZAN and spec["window_frames"] == 647
    card = spec["card"]
    assert card["licence"]["name"] == "GPL-3.0"
    assert card["metrics"]["published"]["test_accuracy"] == pytest.approx(0.740)
    assert "GTZAN" in card["data"]["training_data"]
    assert card["provenance"]["sha256"] == PINNED == spec["provenance"]["sha256"]
    assert card["provenance"]["source_uri"] == f"{served['url']}/weights.h5"
    _reference_check(model_dir)
    assert load_model_dir(str(model_dir)).model_id.startswith("paper-gtzan-")
    # pulled: resolved by name, and a second pull does nothing
    assert resolve_model("paper-gtzan") == str(model_dir)
    assert main(["models", "pull", "paper-gtzan"]) == 0
    assert "already in the cache" in capsys.readouterr().out


@needs_weights
@pytest.mark.timeout(120)
def test_corrupted_download_is_refused_with_both_hashes_and_no_cache_entry(served, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("MGR_HOME", str(home))
    assert main(["models", "pull", "paper-gtzan", "--from", f"{served['url']}/corrupt.h5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert served["bad_sha"] in err and PINNED in err
    assert not home.exists()  # verified before anything is written
    # a missing URL and a missing file: one line each, with the offline alternative
    assert main(["models", "pull", "paper-gtzan", "--from", f"{served['url']}/missing.h5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "HTTP 404" in err and "--from FILE" in err
    assert main(["models", "pull", "paper-gtzan", "--from", str(tmp_path / "nope.h5")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["models", "pull", "paper-gtzan", "--from", str(served["root"])]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert not home.exists()
    assert main(["models", "pull", "no-such-model"]) == 2
    assert "paper-gtzan" in capsys.readouterr().err


@needs_weights
@pytest.mark.timeout(120)
def test_pull_from_a_local_file_and_force(served, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("MGR_HOME", str(home))
    copy = tmp_path / "downloaded" / "weights.h5"
    copy.parent.mkdir()
    shutil.copyfile(served["root"] / "weights.h5", copy)
    assert main(["models", "pull", "paper-gtzan", "--from", str(copy)]) == 0
    first = (home / "paper-gtzan" / "model.pt").read_bytes()
    card = json.loads((home / "paper-gtzan" / "model.json").read_text())["card"]
    assert card["provenance"]["source_uri"] == str(copy)
    # a corrupted --force leaves the cached model as it was
    assert main(["models", "pull", "paper-gtzan", "--force", "--from", str(served["root"] / "corrupt.h5")]) == 2
    assert (home / "paper-gtzan" / "model.pt").read_bytes() == first and _entries(home) == ["paper-gtzan"]
    assert main(["models", "pull", "paper-gtzan", "--force", "--from", f"file://{copy}"]) == 0
    assert _entries(home) == ["paper-gtzan"]
    _reference_check(home / "paper-gtzan")


def test_not_pulled_name_gives_the_pull_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MGR_HOME", str(tmp_path / "empty"))
    (tmp_path / "cat").mkdir()
    hint = "run `mgr models pull paper-gtzan`"
    for argv in (["label", str(tmp_path / "cat"), str(tmp_path / "out"), "--model", "paper-gtzan"],
                 ["evaluate", "paper-gtzan", str(tmp_path / "features")],
                 ["submit", "label", str(tmp_path / "cat"), str(tmp_path / "out"), "--model", "paper-gtzan",
                  "--address", "http://127.0.0.1:9"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and hint in err, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(RegistryError, match="--from FILE"):
        resolve_model("paper-gtzan")


def test_an_existing_path_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.setenv("MGR_HOME", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    kr.write_keras_h5(tmp_path / "x.h5", kr.model2_config(10), kr.random_weights(10))
    assert main(["import-keras", "x.h5", "paper-gtzan"]) == 0  # a folder named like the registry's model
    assert resolve_model("paper-gtzan") == "paper-gtzan"
    assert resolve_model("s3://bucket/models/paper-gtzan") == "s3://bucket/models/paper-gtzan"
    assert resolve_model("no-such-dir") == "no-such-dir"  # left to the command to report


def test_models_list_and_show(tmp_path, monkeypatch, capsys):
    from mgr.models.modeldir import SPEC_FILE
    from mgr.registry import cache

    assert cache.SPEC_FILE == SPEC_FILE  # the cache's own copy of the name (it does not import torch)
    monkeypatch.setenv("MGR_HOME", str(tmp_path / "home"))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    ent = CATALOG["paper-gtzan"]
    for text in ("paper-gtzan", "GPL-3.0", ent.sha256, ent.source_url, "74.0%", "GTZAN", "blues, classical",
                 "no: mgr models pull paper-gtzan", str(tmp_path / "home")):
        assert text in out, text
    assert main(["models", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == list(CATALOG) and rows[0]["cached"] is None
    assert rows[0]["sha256"] == ent.sha256 and rows[0]["licence"] == "GPL-3.0"
    # show NAME before it is pulled: what the catalog knows
    assert main(["models", "show", "paper-gtzan"]) == 0
    out = capsys.readouterr().out
    assert "not in the cache (mgr models pull paper-gtzan)" in out and "GPL-3.0" in out and "0.74" in out
    # show DIR of an imported model: its card says what the import knows
    kr.write_keras_h5(tmp_path / "x.h5", kr.model2_config(10), kr.random_weights(10))
    assert main(["import-keras", str(tmp_path / "x.h5"), str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert main(["models", "show", str(tmp_path / "m"), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert set(card) == {"data", "metrics", "licence", "provenance"}
    assert card["licence"]["name"].startswith("unspecified") and card["provenance"]["source"] == "x.h5"
    assert main(["models", "show", str(tmp_path / "nothing")]) == 2
    assert "not a model directory" in capsys.readouterr().err


def test_saved_model_dirs_carry_a_card_that_follows_their_metrics(tmp_path):
    from mgr.audio.features import pad_value
    from mgr.config import PRESETS
    from mgr.models import build_model
    from mgr.models.modeldir import model_card, read_spec, save_model_dir, write_json

    fcfg = PRESETS["paper"]
    spec = {"name": "cnn-paper", "architecture": "cnn",
            "model_config": {"n_classes": 3, "n_mels": 128, "preset": "paper"},
            "feature_config": fcfg.to_dict(), "genres": ["a", "b", "c"], "window_frames": 647,
            "pad_value": pad_value(fcfg), "normalization": None, "metrics": {"best_val_accuracy": 0.5},
            "provenance": {"features": "s3://bucket/features"}}
    save_model_dir(str(tmp_path / "m"), model=build_model("cnn", **spec["model_config"]), spec=spec)
    card = read_spec(str(tmp_path / "m"))["card"]
    assert card["data"] == {"genres": ["a", "b", "c"], "features": "s3://bucket/features"}
    assert card["metrics"]["measured"] == {"best_val_accuracy": 0.5} and card["licence"]["name"] == "unspecified"
    # training adds the test accuracy to the same spec afterwards and rewrites model.json: the card follows
    spec["metrics"]["test_accuracy"] = 0.75
    write_json(str(tmp_path / "m" / "model.json"), spec)
    assert read_spec(str(tmp_path / "m"))["card"]["metrics"]["measured"]["test_accuracy"] == 0.75
    # a model.json written before cards: the card is made from what it holds
    old = {k: v for k, v in spec.items() if k != "card"}
    assert model_card(old)["metrics"]["measured"]["test_accuracy"] == 0.75


@needs_weights
@pytest.mark.timeout(60)
def test_submit_ships_a_named_model_with_the_job(pulled_home, tmp_path, monkeypatch):
    """`mgr submit label --model NAME`: the cached directory travels in the job's working_dir."""
    from ray._private.runtime_env import packaging

    from mgr.commands import models as models_cmd
    from mgr.commands.submit import job_arguments
    from mgr.remote import runtime_env

    monkeypatch.setenv("MGR_HOME", str(pulled_home))
    monkeypatch.chdir(tmp_path)
    args, _, values = job_arguments("label", ["cat", "labels", "--model", "paper-gtzan"])
    rel = args[args.index("--model") + 1]
    assert not os.path.isabs(rel) and rel.startswith(models_cmd.JOB_MODELS)
    assert values == [str(tmp_path / "cat"), str(tmp_path / "labels")]
    root = Path(runtime_env.build_runtime_env(pip=False)["working_dir"])
    assert root == REPO
    shipped = root / rel
    try:
        assert (shipped / "model.pt").read_bytes() == (pulled_home / "paper-gtzan" / "model.pt").read_bytes()
        # what Ray uploads as the working_dir (its excludes and .gitignore applied) holds the model
        files = []
        packaging._dir_travel(root, [packaging._get_excludes(root, runtime_env.EXCLUDES)],
                              lambda p: files.append(p.relative_to(root).as_posix()), include_gitignore=True)
        assert f"{Path(rel).as_posix()}/model.json" in files and f"{Path(rel).as_posix()}/model.pt" in files
        # a local path is still made absolute, an s3:// one kept
        (tmp_path / "paper-gtzan").mkdir()
        args, _, _ = job_arguments("label", ["cat", "labels", "--model=paper-gtzan"])
        assert f"--model={tmp_path / 'paper-gtzan'}" in args
    finally:
        models_cmd._remove_shipped(shipped)
    assert not shipped.exists()


@needs_weights
@pytest.mark.timeout(480)
@pytest.mark.skipif(MUSIC is None or not MUSIC.is_dir(), reason="../shared/data/music not present")
def test_label_with_the_name_gives_the_reference_genres_on_real_music(ray_local, pulled_home, tmp_path, monkeypatch,
                                                                       capsys):
    """`mgr label ... --model paper-gtzan` on 30.5-s excerpts of real recordings (one window each) gives the
    numpy reference's distributions and top genres."""
    import pyarrow.parquet as pq
    import soundfile as sf

    from mgr.audio.decode import decode

    monkeypatch.setenv("MGR_HOME", str(pulled_home))
    names = ["muldjord__armygeddon.mp3", "sectoid__war_of_freedom.mp3", "brahms_hungarian_dance5.ogg",
             "macleod_vibe_ace.ogg"]
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    excerpts = {}
    for name in names:
        y, sr, _ = decode(str(MUSIC / name), sr=22050, mono=True, name=name)
        excerpts[name] = y[: int(30.5 * sr)]
        sf.write(catalog / (Path(name).stem + ".wav"), excerpts[name], 22050, subtype="FLOAT")
    assert main(["label", str(catalog), str(tmp_path / "labels"), "--model", "paper-gtzan", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model_id"].startswith("paper-gtzan-")
    rows = {Path(r["uri"]).stem: r for r in pq.read_table(tmp_path / "labels").to_pylist()}
    assert len(rows) == len(names)
    weights = kr.real_weights(REAL_H5)
    ref = np.stack([kr.model2_probs(c.T, weights) for c in reference_inputs(excerpts)])
    for name, r in zip(names, ref):
        row = rows[Path(name).stem]
        assert row["error"] is None and row["genre"] == EXPECTED_TOP[name] == kr.GTZAN[int(r.argmax())], name
        np.testing.assert_allclose(np.asarray(row["probs"], dtype=np.float64), r, rtol=0, atol=PROB_ATOL)


@needs_weights
@pytest.mark.timeout(120)
def test_demo_finds_the_paper_model_without_downloading(served, pulled_home, tmp_path, monkeypatch):
    """`make demo`'s paper model: the cache when pulled, else the published file in a local folder
    (sha256-checked, imported into the demo's workdir, the cache left alone), else none."""
    from mgr.experiments.demo import paper_model_dir

    monkeypatch.setenv("MGR_HOME", str(tmp_path / "empty"))
    assert paper_model_dir(str(tmp_path / "w0"), weights_dirs=[]) == (None, "not on this machine")
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copyfile(served["root"] / "corrupt.h5", bad / "paper_gtzan_cnn.h5")
    assert paper_model_dir(str(tmp_path / "w0"), weights_dirs=[str(bad)])[0] is None
    good = tmp_path / "good"
    good.mkdir()
    shutil.copyfile(served["root"] / "weights.h5", good / "paper_gtzan_cnn.h5")
    model_dir, origin = paper_model_dir(str(tmp_path / "w1"), weights_dirs=[str(bad), str(good)])
    assert model_dir == str(tmp_path / "w1" / "models" / "paper-gtzan") and "sha256 verified" in origin
    assert not (tmp_path / "empty").exists()
    _reference_check(model_dir)
    assert json.loads((Path(model_dir) / "model.json").read_text())["card"]["licence"]["name"] == "GPL-3.0"
    monkeypatch.setenv("MGR_HOME", str(pulled_home))
    assert paper_model_dir(str(tmp_path / "w2"), weights_dirs=[])[0] == str(pulled_home / "paper-gtzan")
