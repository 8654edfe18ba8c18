"""Generated test audio: real codecs via soundfile, genre-like classes that are learnable.

Classes differ in tempo, pitch register, timbre (harmonics) and noise; each clip varies
inside its class (random key, tempo jitter, phase), so models must learn the class, not
one waveform.
"""

from __future__ import annotations

import os

import numpy as np

from mgr.experiments.synth import CODECS as FORMATS  # noqa: F401  (re-exported for tests)
from mgr.experiments.synth import write_audio  # noqa: F401  (the one writer, chunked)

#: name → (beats per minute, base MIDI note, harmonics, noise level, scale)
STYLES = {
    "drone": (60, 40, 1, 0.00, (0, 7)),
    "techno": (128, 48, 3, 0.30, (0, 3, 7)),
    "chime": (90, 76, 2, 0.02, (0, 4, 7, 11)),
    "rumble": (100, 33, 6, 0.15, (0, 5)),
    "bossa": (140, 60, 4, 0.05, (0, 2, 4, 7, 9)),
}


def music_like(style: str, seconds: float, *, sr: int = 22050, seed: int = 0) -> np.ndarray:
    """A clip of ``style`` (see :data:`STYLES`): ``[n_samples]`` float32 in [-1, 1]."""
    bpm, base, harmonics, noise, scale = STYLES[style]
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    bpm = bpm * rng.uniform(0.93, 1.07)
    beat = 60.0 / bpm
    key = base + int(rng.integers(-2, 3))
    y = np.zeros(n, dtype=np.float64)
    n_beats = int(np.ceil(seconds / beat))
    for b in range(n_beats):
        start = int(b * beat * sr)
        stop = min(n, start + int(beat * sr))
        if start >= n:
            break
        note = key + scale[int(rng.integers(len(scale)))]
        f0 = 440.0 * 2 ** ((note - 69) / 12)
        seg = t[start:stop] - t[start]
        env = np.exp(-seg * (3.0 + harmonics))
        tone = sum(np.sin(2 * np.pi * f0 * (h + 1) * seg + rng.uniform(0, 6.28)) / (h + 1) for h in range(harmonics))
        y[start:stop] += env * tone
        if noise:
            click = np.exp(-seg * 40.0) * rng.normal(0, noise, stop - start)
            y[start:stop] += click
    y /= max(1e-9, np.abs(y).max()) * 1.25
    return y.astype(np.float32)


def genre_tree(
    root: str,
    *,
    styles=("drone", "techno", "chime"),
    per_style: int = 4,
    seconds: float = 3.0,
    formats=("wav", "flac", "ogg", "mp3"),
    sr: int = 22050,
    seed: int = 0,
) -> list[str]:
    """Write a GTZAN-shaped tree ``root/<style>/<style>.000NN.<ext>``; returns the paths."""
    paths = []
    for si, style in enumerate(styles):
        for i in range(per_style):
            ext = formats[(si + i) % len(formats)]
            y = music_like(style, seconds, sr=sr, seed=seed * 1000 + si * 100 + i)
            paths.append(write_audio(os.path.join(root, style, f"{style}.{i:05d}.{ext}"), y, sr=sr))
    return paths
