"""mgr reproduce: results tables (pure), per-seed split copies, per-step figures, and the whole
runner on a generated GTZAN-shaped tree and a generated FMA-shaped tree (real local Ray)."""

from __future__ import annotations

import json
import math
import os
import pathlib

import numpy as np
import pytest

from mgr.cli import main
from mgr.io.location import Location
from mgr.experiments.results import (build_results, mean_std, normal_halfwidth, pct, render_markdown, scaling_rows,
                         table_rows, wilson_interval)
from tests.audiogen import genre_tree, music_like, write_audio
from tests.featgen import write_features
from tests.test_sources import write_tracks_csv

PNG = b"\x89PNG\r\n\x1a\n"
TINY = {"channels": 16, "hidden": 16}


def _run(seed, model, recipe, acc, n=100, **extra):
    rec = {"seed": seed, "model": model, "recipe": recipe, "accuracy": acc, "n_test": n, "genres": ["a", "b"],
           "confusion": [[1, 0], [0, 1]], "model_dir": f"/out/seed-{seed}/{model}-{recipe}"}
    rec.update(extra)
    return rec


# ---------------------------------------------------------------- results (pure)

def test_confidence_half_width_of_a_gtzan_sized_test_split():
    assert normal_halfwidth(0.74, 100) == pytest.approx(0.086, abs=5e-4)
    low, high = wilson_interval(0.74, 100)
    assert 0.64 < low < 0.74 < high < 0.82
    assert wilson_interval(0.0, 5)[0] == 0.0 and wilson_interval(0.0, 5)[1] > 0.3  # never a zero-width interval
    assert mean_std([0.5, 0.7]) == (pytest.approx(0.6), pytest.approx(math.sqrt(0.02)))
    assert mean_std([0.5]) == (0.5, 0.0)


def test_table_rows_average_over_seeds_and_split_the_crnn_into_weighted_and_mean():
    runs = [_run(s, "crnn", "paper", a, accuracy_weighted=a, accuracy_mean=m)
            for s, a, m in [(0, 0.6, 0.62), (1, 0.64, 0.60)]]
    runs += [_run(s, "cnn", "mgr", a, n=n) for s, a, n in [(1, 0.8, 99), (0, 0.7, 101)]]
    rows = table_rows(runs, dataset="gtzan", split="random")
    by = {(r["model"], r["average"], r["recipe"]): r for r in rows}
    assert set(by) == {("crnn", "weighted", "paper"), ("crnn", "mean", "paper"), ("cnn", None, "mgr")}
    w, m, c = by[("crnn", "weighted", "paper")], by[("crnn", "mean", "paper")], by[("cnn", None, "mgr")]
    assert w["accuracies"] == [0.6, 0.64] and w["mean"] == pytest.approx(0.62) and w["paper"] == 0.609
    assert m["accuracies"] == [0.62, 0.60] and m["paper"] == 0.62
    assert c["seeds"] == [0, 1] and c["accuracies"] == [0.7, 0.8] and c["n_test"] == 100 and c["paper"] == 0.74
    assert c["ci95_halfwidth"] == pytest.approx(normal_halfwidth(0.75, 100))
    assert table_rows(runs, dataset="fma", split="official")[0]["paper"] is None
    assert {r["paper"] for r in table_rows(runs, dataset="fma", split="random")} == {None, 0.773}


def test_markdown_shows_the_table_numbers_runs_and_throughput():
    runs = [_run(s, "cnn", "paper", a) for s, a in [(0, 0.7312), (1, 0.7511)]]
    scaling = [{"workers": 2, "use_gpu": False, "samples": 400, "epoch_seconds": 2.0, "wall_s": 9.0},
               {"workers": 1, "use_gpu": False, "samples": 400, "epoch_seconds": 3.0, "wall_s": 11.0}]
    results = build_results(runs, dataset="gtzan", split="random", seeds=[0, 1], settings={"workers": 2},
                            scaling=scaling, figures=["/out/figures/x.png"])
    assert [s["workers"] for s in results["scaling"]] == [1, 2]
    assert results["scaling"][1]["speedup"] == pytest.approx(1.5)
    assert results["confusion"][0]["matrix"] == [[2, 0], [0, 2]]
    md = render_markdown(results, root="/out")
    row = results["table"][0]
    half = pct(row["ci95_halfwidth"])
    assert f"| {pct(row['mean'])} ± {pct(row['std'])} | 73.1, 75.1 | 74.0 | 100 | ±{half} |" in md
    assert "(seed-1/cnn-paper/learning_curves.png)" in md and "(figures/x.png)" in md
    assert "| 2 | CPU | 200.0 | 1.50× |" in md
    assert "with 100 test clips" in md and "±8.6 points" in md
    assert scaling_rows([])[:] == []


# ---------------------------------------------------------------- per-step figures

def test_step_figures_match_the_model_and_are_png(tmp_path):
    import torch

    from mgr.config import FeatureConfig
    from mgr.audio.features import pad_value
    from mgr.experiments.figures import choose_clips, clip_step_probs, running_weighted, write_step_figures
    from mgr.models.modeldir import load_model_dir, save_model_dir
    from mgr.models import build_model

    feat = str(tmp_path / "feat")
    manifest = write_features(feat, n_genres=3, per_split={"train": 2, "val": 1, "test": 2}, n_mels=16, frames=40)
    cfg = FeatureConfig.from_dict(manifest["feature_config"])
    torch.manual_seed(0)
    model = build_model("crnn", n_classes=3, n_mels=16, preset="mgr", average="weighted", **TINY)
    spec = {"name": "crnn-test", "architecture": "crnn", "genres": manifest["genres"], "window_frames": 40,
            "model_config": {"n_classes": 3, "n_mels": 16, "preset": "mgr", "average": "weighted", **TINY},
            "feature_config": cfg.to_dict(), "pad_value": pad_value(cfg), "average": "weighted",
            "normalization": {"mean": [-5.0] * 16, "std": [2.0] * 16}}
    save_model_dir(str(tmp_path / "m"), model=model, spec=spec)
    loaded = load_model_dir(str(tmp_path / "m"))
    mel = np.random.default_rng(1).normal(-5, 2, size=(16, 30)).astype(np.float32)
    probs, sps = clip_step_probs(loaded, mel)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    x = torch.from_numpy(loaded.normalize(np.concatenate([mel, np.full((16, 10), loaded.pad_value)], 1))[None])
    with torch.no_grad():
        clip = loaded.model(x).exp()[0].numpy()
    assert np.allclose(running_weighted(probs)[-1], clip, atol=1e-5)  # the last running value is the clip's P
    assert sps == pytest.approx(40 / probs.shape[0] * cfg.hop_length / cfg.sr)
    assert choose_clips(["b2", "a1", "b1", "c1"], ["g1", "g0", "g1", "g0"], genres=["g0", "g1"], n=3) == [1, 2, 3]
    out = write_step_figures(str(tmp_path / "m"), feat, str(tmp_path / "fig"), n_clips=4, prefix="crnn-x")
    assert len(out) == 4 and all(open(p, "rb").read(8) == PNG for p in out)
    assert len({os.path.basename(p).split("-")[2] for p in out}) == 3  # every genre drawn before a second clip


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    os.makedirs(tmp_path / "data")
    assert main(["reproduce", "gtzan", str(tmp_path / "out"), "--data", str(tmp_path / "data"),
                 "--split", "official"]) == 2
    assert "official needs FMA" in capsys.readouterr().err
    assert main(["reproduce", "fma", str(tmp_path / "out"), "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "no tracks.csv found" in err and "--tracks" in err and len(err.strip().splitlines()) == 1
    assert main(["reproduce", "gtzan", str(tmp_path / "out"), "--data", str(tmp_path / "data"),
                 "--models", "rnn"]) == 2
    assert "--models" in capsys.readouterr().err


# ---------------------------------------------------------------- the whole runner

def _check_results(out, results):
    """results.json/md exist and hold exactly what re-evaluating each model dir gives."""
    from mgr.pipelines.evaluate import evaluate

    on_disk = json.load(open(os.path.join(out, "results.json")))
    assert on_disk["table"] == json.loads(json.dumps(results["table"]))
    md = open(os.path.join(out, "results.md")).read()
    for run in on_disk["runs"]:
        again = evaluate(run["model_dir"], run["features"], split_seed=run["split_seed"])
        assert again["accuracy"] == run["accuracy"] and again["n"] == run["n_test"]
        assert again["confusion"] == run["confusion"]
        if run["model"] == "crnn":
            assert (again["accuracy_weighted"], again["accuracy_mean"]) == (run["accuracy_weighted"],
                                                                            run["accuracy_mean"])
    for row in on_disk["table"]:
        field = {"weighted": "accuracy_weighted", "mean": "accuracy_mean", None: "accuracy"}[row["average"]]
        runs = sorted((r for r in on_disk["runs"] if (r["model"], r["recipe"]) == (row["model"], row["recipe"])),
                      key=lambda r: r["seed"])
        assert row["accuracies"] == [r[field] for r in runs] and row["seeds"] == [0, 1]
        assert row["mean"] == pytest.approx(np.mean(row["accuracies"]))
        assert f"{pct(row['mean'])} ± {pct(row['std'])} | {', '.join(pct(a) for a in row['accuracies'])}" in md
    for c in on_disk["confusion"]:
        assert open(os.path.join(out, c["png"]), "rb").read(8) == PNG
    return on_disk


@pytest.mark.timeout(600)
def test_reproduce_gtzan_two_seeds(ray_local, tmp_path):
    from mgr.datasets.featureset import read_table
    from mgr.experiments.reproduce import reproduce

    data = str(tmp_path / "genres")
    genre_tree(data, per_style=8, seconds=3.0, formats=("wav", "mp3"))
    out = str(tmp_path / "out")
    results = reproduce("gtzan", data, out, seeds=2, workers=1, epochs=1, models=("crnn",),
                        recipes=("mgr",), scaling_workers=(1, 2), scaling_epochs=1,
                        scaling_run=("crnn", "mgr"), figure_clips=3, crop_seconds=1.0, model_options=TINY)
    on_disk = _check_results(out, results)
    assert len(on_disk["runs"]) == 2 and len(on_disk["table"]) == 2  # the crnn's weighted and mean rows
    assert on_disk["extraction"]["counts"]["ok"] == 24
    # seed 1 trains on its own split of the same clips, computed on the fly: no copy of the features
    from mgr.datasets.sources.split import SplitRule
    from mgr.pipelines.train_data import read_split

    s0 = {r["uri"]: r["split"] for r in read_table(out + "/features", columns=["uri", "split"]).to_pylist()
          if r["split"]}
    s1 = {r["uri"]: r["split"] for r in read_split(Location(out + "/features"), None, columns=["uri", "split"],
                                                    rule=SplitRule(seed=1)).take_all()}
    assert set(s0) == set(s1) and s0 != s1
    assert {r["uri"]: r["split"] for r in read_split(Location(out + "/features"), None, columns=["uri", "split"],
                                                      rule=SplitRule(seed=0)).take_all()} == s0
    assert [name for name in os.listdir(out) if name.startswith("features")] == ["features"]
    assert {(r["features"], r["split_seed"]) for r in on_disk["runs"] if r["seed"] == 1} == {(out + "/features", 1)}
    # the paper's Figures 6-7: per crnn recipe, seed 0's test clips (the paper recipe's runs in the FMA test)
    assert len(on_disk["figures"]) >= 1 and {os.path.basename(f).split("-seed")[0] for f in on_disk["figures"]} \
        == {"crnn-mgr"}
    assert all(open(f, "rb").read(8) == PNG for f in on_disk["figures"])
    assert [m["workers"] for m in on_disk["scaling"]] == [1, 2]
    assert all(m["samples"] > 0 and m["samples_per_s"] > 0 for m in on_disk["scaling"])
    for run in on_disk["runs"]:
        for name in ("learning_curves.png", "confusion_matrix.png", "report.json"):
            assert os.path.getsize(os.path.join(run["model_dir"], name)) > 0


def _fma_tree(root):
    """fma_small/ddd/dddddd.mp3 for 3 genres × 6 tracks (official split 4/1/1), one broken file, one
    medium-only track; tracks.csv (2-row header) in the sibling fma_metadata/."""
    genres = {"Electronic": "techno", "Folk": "chime", "Experimental": "drone"}
    tracks, tid = {}, 2
    for g, (genre, style) in enumerate(genres.items()):
        for i in range(6):
            split = "training" if i < 4 else ("validation" if i == 4 else "test")
            key = f"{tid:06d}"
            tracks[key] = (100 + g, split, "small", genre)
            write_audio(os.path.join(root, "fma_small", key[:3], f"{key}.mp3"),
                        music_like(style, 3.0, seed=tid), sr=22050)
            tid += 1001
    tracks["099134"] = (900, "training", "small", "Folk")  # no audio in it, as in the real fma_small
    os.makedirs(os.path.join(root, "fma_small", "099"))
    open(os.path.join(root, "fma_small", "099", "099134.mp3"), "wb").write(b"\xff\xfb" + b"\0" * 50)
    tracks["140000"] = (901, "training", "medium", "Folk")
    write_audio(os.path.join(root, "fma_small", "140", "140000.mp3"), music_like("chime", 3.0, seed=7))
    os.makedirs(os.path.join(root, "fma_metadata"))
    write_tracks_csv(pathlib.Path(root, "fma_metadata", "tracks.csv"), tracks)
    return os.path.join(root, "fma_small")


@pytest.mark.timeout(300)
def test_reproduce_fma_official_split_two_seeds_from_the_cli(ray_local, tmp_path, capsys):
    data = _fma_tree(str(tmp_path))
    out = str(tmp_path / "out")
    assert main(["reproduce", "fma", out, "--data", data, "--split", "official", "--seeds", "2", "--workers", "1",
                 "--epochs", "1", "--models", "cnn", "--recipes", "paper", "--scaling-workers", "none"]) == 0
    printed = capsys.readouterr().out
    on_disk = json.load(open(os.path.join(out, "results.json")))
    on_disk = _check_results(out, on_disk)
    assert on_disk["split"] == "official" and on_disk["settings"]["labels"].endswith("fma_metadata/tracks.csv")
    counts = on_disk["extraction"]["counts"]
    assert counts["files"] == 20 and counts["errors"] == 1 and counts["unlabeled"] == 1  # nothing dropped
    assert counts["by_split"] == {"test": 3, "train": 12, "val": 3}
    assert [r["n_test"] for r in on_disk["runs"]] == [3, 3]
    assert {r["features"] for r in on_disk["runs"]} == {out + "/features"}  # the official split for every seed
    (row,) = on_disk["table"]
    assert row["paper"] is None and "not comparable" in on_disk["paper_note"]
    assert f"Model 2 (cnn), paper recipe: {pct(row['mean'])} ± {pct(row['std'])} %" in printed
    assert on_disk["scaling"] == [] and on_disk["figures"] == []
    # the same command again resumes: nothing is trained again, the table is the same
    weights = os.path.join(out, "seed-1", "cnn-paper", "model.pt")
    before = os.path.getmtime(weights)
    assert main(["reproduce", "fma", out, "--data", data, "--split", "official", "--seeds", "2", "--workers", "1",
                 "--epochs", "1", "--models", "cnn", "--recipes", "paper", "--scaling-workers", "none"]) == 0
    assert "reusing cnn/paper" in capsys.readouterr().out
    again = json.load(open(os.path.join(out, "results.json")))
    assert os.path.getmtime(weights) == before and again["table"] == on_disk["table"]
