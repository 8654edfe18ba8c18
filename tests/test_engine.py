"""The pure-torch engine: recipes, crops, schedule, window voting, metrics, training steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mgr.inference.predict import predict_tracks
from mgr.training import arrays, engine
from mgr.config import PRESETS, FeatureConfig
from mgr.errors import ConfigError
from mgr.models import build_model
from tests.featgen import synthetic_mel

PAPER = PRESETS["paper"]


def test_paper_recipes_are_the_papers():
    cnn = engine.resolve_recipe("cnn", preset="paper", feature_config=PAPER)
    assert (cnn.optimizer, cnn.lr, cnn.batch_size, cnn.window_frames, cnn.crop) == ("adam", 1e-4, 256, 647, False)
    assert cnn.schedule == "constant" and cnn.label_smoothing == 0.0
    crnn = engine.resolve_recipe("crnn", preset="paper", feature_config=PAPER)
    assert (crnn.optimizer, crnn.lr, crnn.batch_size, crnn.window_frames) == ("rmsprop", 1e-5, 64, 647)


def test_mgr_recipe_crops_and_overrides():
    r = engine.resolve_recipe("cnn", preset="mgr", feature_config=PAPER)
    assert r.crop and r.window_frames == PAPER.frames_for_seconds(5.0) == 108
    r = engine.resolve_recipe("crnn", preset="mgr", feature_config=PAPER, crop_seconds=3.0, lr=0.01, epochs=None)
    assert r.window_frames == 65 and r.lr == 0.01 and r.epochs == 60
    whole = engine.resolve_recipe("cnn", preset="mgr", feature_config=PAPER, crop_seconds=60.0)
    assert whole.window_frames == 647 and not whole.crop
    with pytest.raises(ConfigError, match="training preset"):
        engine.resolve_recipe("cnn", preset="keras", feature_config=PAPER)
    with pytest.raises(ConfigError, match="learning rate"):
        engine.resolve_recipe("cnn", preset="mgr", feature_config=PAPER, lr=-1.0)
    with pytest.raises(ConfigError, match="crop"):
        engine.resolve_recipe("cnn", preset="mgr", feature_config=PAPER, crop_seconds=0)


def test_lr_schedule_warms_up_and_decays():
    r = engine.resolve_recipe("cnn", preset="mgr", feature_config=PAPER, epochs=10)
    assert engine.lr_at(r, 0.5) == pytest.approx(r.lr * 0.5)
    assert engine.lr_at(r, 1.0) == pytest.approx(r.lr)
    assert engine.lr_at(r, 10.0) == pytest.approx(r.lr * 0.01)
    lrs = [engine.lr_at(r, e) for e in range(1, 11)]
    assert lrs == sorted(lrs, reverse=True)
    paper = engine.resolve_recipe("cnn", preset="paper", feature_config=PAPER)
    assert {engine.lr_at(paper, e) for e in (0, 3.3, 99)} == {1e-4}


def test_crop_batch_random_crops_and_padding():
    rng = np.random.default_rng(0)
    long = np.arange(4 * 50, dtype=np.float16).reshape(4, 50)
    short = np.ones((4, 10), np.float16)
    out = arrays.crop_batch([long, short], width=20, pad=-13.8, rng=rng)
    assert out.shape == (2, 4, 20) and out.dtype == np.float32
    start = int(out[0, 0, 0])
    assert 0 <= start <= 30 and np.array_equal(out[0], long[:, start:start + 20])
    assert np.all(out[1, :, :10] == 1) and np.allclose(out[1, :, 10:], -13.8)
    first = arrays.crop_batch([long], width=20, pad=0.0)
    assert np.array_equal(first[0], long[:, :20])
    starts = {int(arrays.crop_batch([long], width=20, pad=0, rng=rng)[0, 0, 0]) for _ in range(30)}
    assert len(starts) > 5


def test_band_stats_match_numpy():
    rng = np.random.default_rng(1)
    mels = [rng.normal(i, 2.0, size=(3, 20 + 7 * i)).astype(np.float16) for i in range(4)]
    mean, std = arrays.band_stats(mels, n_mels=3)
    allf = np.concatenate([m.astype(np.float64) for m in mels], axis=1)
    assert np.allclose(mean, allf.mean(1)) and np.allclose(std, allf.std(1))
    with pytest.raises(ConfigError):
        arrays.band_stats([], n_mels=3)


def test_predict_tracks_is_the_mean_of_window_distributions():
    torch.manual_seed(0)
    model = build_model("cnn", n_classes=3, n_mels=8, preset="mgr", channels=8, hidden=8).eval()
    rng = np.random.default_rng(2)
    track = rng.normal(size=(8, 100)).astype(np.float32)
    short = rng.normal(size=(8, 15)).astype(np.float32)
    probs = predict_tracks(model, [track, short], width=40, pad=-5.0, device=torch.device("cpu"))
    with torch.no_grad():
        wins = torch.tensor(np.stack([track[:, s:s + 40] for s in (0, 20, 40, 60)]))
        expected = model(wins).exp().mean(0).numpy()
        padded = np.concatenate([short, np.full((8, 25), -5.0, np.float32)], axis=1)
        expected_short = model(torch.tensor(padded[None])).exp()[0].numpy()
    assert np.allclose(probs[0], expected, atol=1e-6)
    assert np.allclose(probs[1], expected_short, atol=1e-6)
    assert np.allclose(probs.sum(1), 1.0)


def test_classification_metrics_hand_case():
    m = engine.classification_metrics([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], genres=["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6) and m["n"] == 6
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_genre"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8),
                                   "support": 2}
    assert m["per_genre"]["c"]["precision"] == 1.0 and m["per_genre"]["c"]["recall"] == 0.5


def _data(n_per, *, seed, n_genres=3, n_mels=16, frames=60):
    rng = np.random.default_rng(seed)
    mels, ys = [], []
    for g in range(n_genres):
        for _ in range(n_per):
            mels.append(synthetic_mel(g, n_genres, n_mels=n_mels, frames=frames, rng=rng).astype(np.float16))
            ys.append(g)
    return mels, np.array(ys)


def _fit(arch, seed=0, epochs=10):
    cfg = FeatureConfig(preset="synthetic", n_mels=16, clip_frames=60)
    recipe = engine.resolve_recipe(arch, preset="mgr", feature_config=cfg, crop_seconds=1.0, epochs=epochs,
                                   batch_size=16, seed=seed, model_options={"channels": 16, "hidden": 16})
    engine.set_seed(seed)
    model = build_model(arch, **recipe.model_config(n_classes=3, n_mels=16))
    opt = engine.make_optimizer(model, recipe)
    mels, y = _data(20, seed=1)
    mean, std = arrays.band_stats(mels, n_mels=16)
    rng = np.random.default_rng(seed)
    dev = engine.device_for(False)
    for epoch in range(epochs):
        stats = engine.train_epoch(model, arrays.iter_batches(mels, y, batch_size=16, width=recipe.window_frames,
                                                              pad=-13.8, rng=rng),
                                   optimizer=opt, recipe=recipe, epoch=epoch, steps_per_epoch=4, device=dev,
                                   mean=mean, std=std)
    assert stats["count"] == 60 and stats["steps"] == 4
    test_mels, test_y = _data(10, seed=99)
    probs = predict_tracks(model, test_mels, width=recipe.window_frames, pad=-13.8, mean=mean, std=std)
    return model, float((probs.argmax(1) == test_y).mean())


@pytest.mark.parametrize("arch", ["cnn", "crnn"])
def test_engine_alone_learns_a_learnable_set(arch):
    _, acc = _fit(arch)
    assert acc >= 0.9


def test_training_is_deterministic_with_a_seed():
    a, _ = _fit("cnn", seed=5, epochs=2)
    b, _ = _fit("cnn", seed=5, epochs=2)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_cpu_device_and_no_autocast():
    dev = engine.device_for(False)
    assert dev.type == "cpu"
    with engine.autocast(dev):
        assert not torch.is_autocast_enabled()
    assert not engine.make_scaler(dev).is_enabled()


def test_early_stopping_counts_epochs_without_a_better_val_accuracy():
    stop = engine.EarlyStopping(2)
    assert stop.update(0.5, epoch=0) and not stop.finished
    assert not stop.update(0.5, epoch=1) and not stop.finished  # equal is not better
    assert stop.update(0.7, epoch=2) and stop.since_best == 0 and stop.best_epoch == 2
    stop.update(0.6, epoch=3)
    stop.update(0.6, epoch=4)
    assert stop.finished and stop.best == 0.7
    never = engine.EarlyStopping(None)
    for e in range(50):
        never.update(0.1, epoch=e)
    assert not never.finished
