"""``mgr demo``: the whole system on a generated collection, on the embedded local Ray.

generate a labelled genre-like collection and a catalog of long songs → ``mgr extract``
→ train ``cnn`` and ``crnn`` with Ray Train → evaluate both on the test split → ``mgr label``
the catalog (and a folder of real music when given) with the better model → summary and
a genre timeline PNG of one long track. The real music is also labeled with the paper's
GTZAN model (registry name ``paper-gtzan``) when it is on this machine: in the cache
(``mgr models pull paper-gtzan``) or as the published file in one of ``weights_dirs``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from mgr.errors import ConfigError

__all__ = ["DemoSize", "SIZES", "PAPER_MODEL", "generate_collection", "paper_model_dir", "run_demo", "timeline_png"]

#: the registry's model that labels the real recordings next to the demo's own
PAPER_MODEL = "paper-gtzan"


@dataclass(frozen=True)
class DemoSize:
    """How big the generated collection and the training runs are."""

    styles: tuple[str, ...]
    clips_per_style: int
    clip_seconds: float
    songs: int
    song_sections: int
    section_seconds: float
    epochs: int
    crop_seconds: float
    workers: int


SIZES = {
    # `make demo`: ~5 minutes on 2 cores
    "full": DemoSize(("ambient", "techno", "rock", "jazz", "folk"), 48, 12.0, 3, 4, 40.0, 12, 5.0, 2),
    # the test suite's run: seconds, not minutes
    "quick": DemoSize(("ambient", "techno", "rock"), 8, 6.0, 1, 2, 12.0, 2, 5.0, 2),
}

_FORMATS = ("wav", "flac", "ogg", "mp3")


def generate_collection(root: str, *, size: DemoSize, seed: int = 0) -> dict[str, Any]:
    """Write ``root/collection/<style>/<style>.NNNNN.<ext>`` and ``root/catalog/`` songs.

    The catalog holds multi-minute songs whose sections change style, plus a few unseen
    clips, in all four codecs; returns what was written.
    """
    from mgr.experiments.synth import clip, song, write_audio

    rng = np.random.default_rng(seed)
    collection = os.path.join(root, "collection")
    catalog = os.path.join(root, "catalog")
    clips, songs = [], []
    for si, style in enumerate(size.styles):
        os.makedirs(os.path.join(collection, style), exist_ok=True)
        for i in range(size.clips_per_style):
            ext = _FORMATS[(si + i) % len(_FORMATS)]
            path = os.path.join(collection, style, f"{style}.{i:05d}.{ext}")
            if not os.path.exists(path):
                write_audio(path, clip(style, size.clip_seconds, seed=seed * 100_000 + si * 1000 + i))
            clips.append(path)
    os.makedirs(catalog, exist_ok=True)
    for j in range(size.songs):
        order = [size.styles[k] for k in rng.permutation(len(size.styles))[: size.song_sections]]
        ext = ("mp3", "ogg", "flac")[j % 3]
        path = os.path.join(catalog, f"song{j:02d}_{'-'.join(order)}.{ext}")
        if not os.path.exists(path):
            write_audio(path, song(order, section_seconds=size.section_seconds, seed=seed * 1000 + 500 + j))
        songs.append({"path": path, "sections": order, "section_seconds": size.section_seconds})
    for si, style in enumerate(size.styles):  # unseen clips for the catalog too
        path = os.path.join(catalog, f"unseen_{style}.wav")
        if not os.path.exists(path):
            write_audio(path, clip(style, size.clip_seconds, seed=seed * 7 + 99_000 + si))
    return {"collection": collection, "catalog": catalog, "clips": len(clips), "songs": songs}


def window_probs(model_dir: str, audio_path: str, *, hop_seconds: float | None = None) -> dict[str, Any]:
    """Per-window genre distributions of one file (in process, no Ray), for a timeline.

    Returns
    -------
    dict
        ``starts_s`` [n_windows], ``probs`` [n_windows, n_genres], ``genres``, ``window_s``.
    """
    from mgr.audio.decode import decode
    from mgr.audio.features import log_mel
    from mgr.inference.predict import window_distributions, window_geometry
    from mgr.inference.windows import cut_windows, window_starts
    from mgr.models.modeldir import load_model_dir

    loaded = load_model_dir(model_dir)
    cfg = loaded.feature_config
    y, _, _ = decode(audio_path, sr=cfg.sr, mono=cfg.mono)
    mel = log_mel(y, cfg=cfg)
    w, hop = window_geometry(window_frames=loaded.window_frames, frames_per_second=cfg.sr / cfg.hop_length,
                             hop_seconds=hop_seconds)
    starts = window_starts(mel.shape[1], width=w, hop=hop)
    probs, _ = window_distributions(loaded.model, cut_windows(mel, starts, width=w, pad=loaded.pad_value),
                                    mean=loaded.mean, std=loaded.std)
    return {"starts_s": starts * cfg.hop_length / cfg.sr, "probs": probs, "genres": loaded.genres,
            "window_s": cfg.frame_seconds(w)}


def paper_model_dir(workdir: str, *, weights_dirs=()) -> tuple[str | None, str]:
    """The paper's GTZAN model for the demo, without any download.

    The cached model when pulled; else the published file found (by sha256) in one of
    ``weights_dirs``, imported into ``workdir/models/paper-gtzan`` (the cache is left alone).

    Returns
    -------
    (str or None, str)
        The model directory (None when neither is there) and where it came from.
    """
    from mgr.registry import cached_dir, entry, find_local_weights, is_cached
    from mgr.registry.pull import build_model_dir

    if is_cached(PAPER_MODEL):
        return str(cached_dir(PAPER_MODEL)), f"the cache ({cached_dir(PAPER_MODEL)})"
    weights = find_local_weights(PAPER_MODEL, list(weights_dirs))
    if weights is None:
        return None, "not on this machine"
    out = os.path.join(workdir, "models", PAPER_MODEL)
    if not os.path.isfile(os.path.join(out, "model.json")):
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(weights, "rb") as fh:
            build_model_dir(entry(PAPER_MODEL), fh.read(), out, source=str(weights))
    return out, f"{weights}, sha256 verified"


def timeline_png(path: str, timeline: dict[str, Any], *, title: str, sections: list[str] | None = None,
                 section_seconds: float | None = None) -> str:
    """Stacked per-window genre probabilities over time (the track's genre timeline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centers = timeline["starts_s"] + timeline["window_s"] / 2
    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=110)
    ax.stackplot(centers, timeline["probs"].T, labels=timeline["genres"], alpha=0.85)
    if sections and section_seconds:
        for k, name in enumerate(sections):
            ax.axvline(k * section_seconds, color="k", lw=0.8, ls="--")
            ax.text(k * section_seconds + 1, 1.02, f"true: {name}", fontsize=8, va="bottom")
    ax.set_xlim(centers.min() if len(centers) > 1 else 0, centers.max() if len(centers) > 1 else timeline["window_s"])
    ax.set_ylim(0, 1)
    ax.set_xlabel("time (s, window centre)")
    ax.set_ylabel("genre probability")
    ax.set_title(title, fontsize=10, pad=14)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_demo(
    workdir: str = "demo-run",
    *,
    size: str = "full",
    music: str | None = None,
    seed: int = 0,
    num_cpus: int | None = None,
    weights_dirs=(),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the whole pipeline in ``workdir`` and return (and write) ``summary.json``.

    Parameters
    ----------
    workdir : str
        Where the collection, features, models, labels and pictures go.
    size : {"full", "quick"}
        Collection and training size (:data:`SIZES`).
    music : str, optional
        A folder of real recordings to label as well.
    weights_dirs : sequence of str
        Folders that may hold the paper's published GTZAN weights (see
        :func:`paper_model_dir`); with them or a pulled ``paper-gtzan``, ``music`` is also
        labeled with the paper's model.
    """
    from mgr.pipelines.evaluate import evaluate
    from mgr.pipelines.catalog_config import ExtractConfig, LabelConfig
    from mgr.pipelines.train_config import TrainJobConfig
    from mgr.pipelines.extract import extract
    from mgr.pipelines.label import label_catalog
    from mgr.pipelines.runtime import ray_session
    from mgr.pipelines.train import train

    if size not in SIZES:
        raise ConfigError(f"unknown demo size {size!r}; choose one of {sorted(SIZES)}")
    spec = SIZES[size]
    os.makedirs(workdir, exist_ok=True)
    workdir = os.path.abspath(workdir)
    t0 = time.perf_counter()
    steps: dict[str, float] = {}

    def step(name: str):
        steps[name] = round(time.perf_counter() - t0 - sum(steps.values()), 1)

    log(f"[1/6] generating a labelled collection ({len(spec.styles)} styles × {spec.clips_per_style} clips of "
        f"{spec.clip_seconds:.0f} s) and a catalog of {spec.songs} multi-section songs in {workdir}")
    gen = generate_collection(workdir, size=spec, seed=seed)
    step("generate")
    features = os.path.join(workdir, "features")
    results: dict[str, Any] = {"workdir": workdir}
    with ray_session(num_cpus=num_cpus):
        log("[2/6] mgr extract (Ray Data: decode + log-mel → Parquet)")
        ext = extract(ExtractConfig(gen["collection"], features, labels="folder", seed=seed))
        results["extract"] = {"files": ext["counts"]["files"], "errors": ext["counts"]["errors"],
                              "by_split": ext["counts"]["by_split"], "files_per_s": ext["run"]["files_per_s"]}
        step("extract")
        models = {}
        for arch in ("cnn", "crnn"):
            log(f"[3/6] mgr train --model {arch} (Ray Train, {spec.workers} workers, {spec.epochs} epochs)")
            out = os.path.join(workdir, "models", arch)
            train(TrainJobConfig(features, out, model=arch, preset="mgr", workers=spec.workers, epochs=spec.epochs,
                                 crop_seconds=spec.crop_seconds, seed=seed, patience=spec.epochs))
            models[arch] = out
        step("train")
        log("[4/6] mgr evaluate on the test split")
        scores = {}
        for arch, out in models.items():
            ev = evaluate(out, features, split="test")
            scores[arch] = ev
        best = max(scores, key=lambda a: scores[a]["accuracy"])
        results["evaluate"] = {
            a: {k: s[k] for k in ("accuracy", "n", "accuracy_weighted", "accuracy_mean") if k in s} for a, s in scores.items()
        }
        results["best_model"] = models[best]
        step("evaluate")
        log(f"[5/6] mgr label the catalog with the better model ({best})")
        labels_out = os.path.join(workdir, "labels")
        lab = label_catalog(LabelConfig(gen["catalog"], labels_out, model_dir=models[best], overwrite=True),
                            log=lambda _m: None)
        results["label"] = _label_summary(lab, labels_out)
        if music:
            if os.path.isdir(music):
                music_out = os.path.join(workdir, "labels-music")
                mus = label_catalog(LabelConfig(music, music_out, model_dir=models[best], overwrite=True),
                                    log=lambda _m: None)
                results["label_music"] = _label_summary(mus, music_out)
                paper, origin = paper_model_dir(workdir, weights_dirs=weights_dirs)
                if paper is None:
                    log(f"      (the paper's GTZAN model is {origin}: `mgr models pull {PAPER_MODEL}` "
                        "adds real genres on the real music to the demo)")
                else:
                    log(f"      and with the paper's GTZAN model ({PAPER_MODEL}, from {origin})")
                    paper_out = os.path.join(workdir, "labels-music-paper")
                    pap = label_catalog(LabelConfig(music, paper_out, model_dir=paper, overwrite=True),
                                        log=lambda _m: None)
                    results["label_music_paper"] = dict(_label_summary(pap, paper_out), model=paper)
            else:
                log(f"      (no folder {music}: skipping real music)")
        step("label")
    log("[6/6] genre timeline of one long track")
    first = gen["songs"][0]
    tl = window_probs(models[best], first["path"])
    png = timeline_png(os.path.join(workdir, "timeline.png"), tl, title=f"{os.path.basename(first['path'])} ({best})",
                       sections=first["sections"], section_seconds=first["section_seconds"])
    results["timeline_png"] = png
    results["confusion_pngs"] = {a: os.path.join(m, "confusion_matrix.png") for a, m in models.items()}
    step("timeline")
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["steps_s"] = steps
    with open(os.path.join(workdir, "summary.json"), "w") as fh:
        json.dump(results, fh, indent=2, default=str)
    log(format_summary(results))
    return results


def _label_summary(summary: dict, output: str) -> dict:
    import pyarrow.parquet as pq

    table = pq.read_table(output, columns=["uri", "genre", "confidence", "error"])
    rows = table.to_pylist()
    return {
        "output": output,
        "files": len(rows),
        "errors": sum(1 for r in rows if r["error"]),
        "genres": {os.path.basename(r["uri"]): (r["genre"], round(r["confidence"] or 0, 2)) for r in rows},
        "files_per_s": summary["run"].get("files_per_s"),
        "audio_minutes_per_s": summary["run"].get("audio_minutes_per_s"),
    }


def format_summary(r: dict) -> str:
    lines = ["", "mgr demo — summary", "=" * 40]
    lines.append(f"features: {r['extract']['files']} files, splits {r['extract']['by_split']}, "
                 f"{r['extract']['files_per_s']} files/s")
    lines.append("test accuracy:")
    for arch, s in r["evaluate"].items():
        extra = ""
        if "accuracy_weighted" in s:
            extra = f"  (time-weighted {s['accuracy_weighted']:.3f}, plain mean {s['accuracy_mean']:.3f})"
        lines.append(f"  {arch:5s} {s['accuracy']:.3f} on {s['n']} clips{extra}")
    for key in ("label", "label_music", "label_music_paper"):
        if key in r:
            lab = r[key]
            if key == "label_music_paper":
                lines.append(f"real music with the paper's GTZAN model ({PAPER_MODEL}, GPL-3.0 weights, "
                             "74.0% published on GTZAN):")
            lines.append(f"labels ({lab['output']}): {lab['files']} files, {lab['errors']} errors, "
                         f"{lab['files_per_s']} files/s, {lab['audio_minutes_per_s']} audio-min/s")
            for name, (genre, conf) in sorted(lab["genres"].items()):
                lines.append(f"  {name:45s} {genre} ({conf})")
    lines.append(f"best model: {r['best_model']}")
    lines.append(f"confusion matrices: {', '.join(r['confusion_pngs'].values())}")
    lines.append(f"genre timeline: {r['timeline_png']}")
    lines.append(f"everything: {r['workdir']} (summary.json); {r['seconds']} s in all, steps {r['steps_s']}")
    return "\n".join(lines)
