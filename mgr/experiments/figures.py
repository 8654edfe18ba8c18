"""The paper's Figures 6–7: how a crnn's decision forms over a clip (no Ray).

For a chosen test clip, the crnn's per-time-step distributions ``P_t`` (one softmax per
LSTM step) are plotted over time, one line per genre, next to the running time-weighted
average ``Σ_{s≤t} s·P_s / Σ_{s≤t} s`` (the clip's decision had it stopped at step t).
The whole clip is fed to the model at once (padded to the model's window W if shorter).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from mgr.errors import ModelError
from mgr.io.location import Location
from mgr.inference.predict import window_distributions
from mgr.inference.windows import fit_frames

__all__ = ["clip_step_probs", "running_weighted", "step_distribution_png", "choose_clips", "write_step_figures"]


def clip_step_probs(loaded, mel: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-step distributions of a crnn for one clip.

    Parameters
    ----------
    loaded : mgr.models.modeldir.LoadedModel
        A crnn model directory.
    mel : np.ndarray
        ``[n_mels, T]`` raw log-mel of the clip.

    Returns
    -------
    probs : np.ndarray
        ``[n_steps, n_classes]`` float64, rows summing to 1.
    seconds_per_step : float
        Audio seconds one step stands for.
    """
    if loaded.spec.get("architecture") != "crnn" or not hasattr(loaded.model, "step_probs"):
        raise ModelError(f"per-step figures need a crnn model, got {loaded.spec.get('architecture')!r}")
    mel = np.asarray(mel, dtype=np.float32)
    frames = max(mel.shape[1], loaded.window_frames)
    x = fit_frames(mel, frames, pad=loaded.pad_value)[None]
    _, steps = window_distributions(loaded.model, x, mean=loaded.mean, std=loaded.std, per_step=True)
    probs = steps[0].astype(np.float64)
    fc = loaded.feature_config
    seconds_per_step = frames / probs.shape[0] * fc.hop_length / fc.sr
    return probs, float(seconds_per_step)


def running_weighted(probs: np.ndarray) -> np.ndarray:
    """``[n_steps, n_classes]`` running time-weighted average (w_s = s, s = 1..t) of ``probs``."""
    w = np.arange(1, probs.shape[0] + 1, dtype=np.float64)[:, None]
    return np.cumsum(w * probs, axis=0) / np.cumsum(w, axis=0)


def step_distribution_png(probs: np.ndarray, *, genres: Sequence[str], seconds_per_step: float,
                          true_genre: str | None = None, audio_seconds: float | None = None,
                          title: str = "") -> bytes:
    """PNG: per-step distributions (top) and their running weighted average (bottom).

    Parameters
    ----------
    probs : np.ndarray
        ``[n_steps, n_classes]`` per-step distributions.
    genres : sequence of str
        The ``n_classes`` genre names, in model order.
    audio_seconds : float, optional
        Where the clip's audio ends when it was padded to the model's window (shaded after).
    """
    from mgr.reporting.plots import figure, png

    plt = figure()
    t = (np.arange(probs.shape[0]) + 1) * seconds_per_step
    running = running_weighted(probs)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    cmap = plt.get_cmap("tab10" if len(genres) <= 10 else "tab20")
    for k, g in enumerate(genres):
        bold = g == true_genre
        style = {"color": cmap(k % cmap.N), "linewidth": 2.6 if bold else 1.1, "label": g + (" (true)" if bold else "")}
        ax1.plot(t, probs[:, k], **style)
        ax2.plot(t, running[:, k], **style)
    ax1.set_ylabel("P_t (per step)")
    ax2.set_ylabel("weighted average so far")
    ax2.set_xlabel("time (s)")
    for ax in (ax1, ax2):
        if audio_seconds is not None and audio_seconds < t[-1]:
            ax.axvspan(audio_seconds, t[-1], color="0.85", zorder=0, label=None)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    if audio_seconds is not None and audio_seconds < t[-1]:
        ax2.text(audio_seconds, 0.97, " padding", va="top", fontsize=8, color="0.4")
    ax1.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    if title:
        fig.suptitle(title)
    return png(fig, plt)


def choose_clips(track_ids: Sequence[str], labels: Sequence[str], *, genres: Sequence[str], n: int) -> list[int]:
    """Indices of up to ``n`` clips: the first (by track id) of each genre in turn, round robin."""
    by_genre: dict[str, list[int]] = {g: [] for g in genres}
    for i in sorted(range(len(labels)), key=lambda i: str(track_ids[i])):
        if labels[i] in by_genre:
            by_genre[labels[i]].append(i)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n and any(len(v) > depth for v in by_genre.values()):
        for g in genres:
            if len(by_genre[g]) > depth and len(chosen) < n:
                chosen.append(by_genre[g][depth])
        depth += 1
    return chosen


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def write_step_figures(model_dir: Location | str, features: Location | str, out: Location | str, *,
                       n_clips: int = 4, split: str = "test", prefix: str = "crnn",
                       endpoint_url: str | None = None) -> list[str]:
    """Write one PNG per chosen clip of ``split`` under ``out``; return their URIs.

    Only the chosen clips' mels are read (ids and labels first, then those rows).
    """
    from mgr.datasets.featureset import read_table, to_arrays
    from mgr.models.modeldir import load_model_dir

    model_dir, features, out = (Location.of(x, endpoint_url=endpoint_url) for x in (model_dir, features, out))
    loaded = load_model_dir(model_dir)
    index = read_table(features, columns=["track_id", "label"], splits=[split], ok_only=True)
    labels = index.column("label").to_pylist()
    ids = index.column("track_id").to_pylist()
    chosen = choose_clips(ids, labels, genres=loaded.genres, n=n_clips)
    if not chosen:
        return []
    table = read_table(features, columns=["track_id", "n_mels", "n_frames", "mel"], splits=[split], ok_only=True,
                       track_ids=[ids[i] for i in chosen])
    by_id = dict(zip(table.column("track_id").to_pylist(), to_arrays(table)))
    written = []
    for i in chosen:
        mel = by_id[ids[i]]
        probs, sps = clip_step_probs(loaded, mel)
        clip_pred = loaded.genres[int(running_weighted(probs)[-1].argmax())]
        fc = loaded.feature_config
        image = step_distribution_png(probs, genres=loaded.genres, seconds_per_step=sps, true_genre=labels[i],
                                    audio_seconds=mel.shape[1] * fc.hop_length / fc.sr,
                                    title=f"{prefix}: {ids[i]} (true {labels[i]}; "
                                          f"whole-clip weighted average: {clip_pred})")
        where = out.join(f"{_safe(prefix)}-{_safe(str(ids[i]))}.png")
        where.write_bytes(image)
        written.append(where.uri)
    return written
