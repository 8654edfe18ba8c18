"""Synthetic, genre-like music for the demo and the tests (pure numpy).

Five styles differ the way genres do — rhythm (tempo, meter, drum pattern, swing),
timbre (instruments' harmonics, distortion, envelopes, noise) and tonality (mode, chord
vocabulary, register) — and every clip varies inside its style (key, tempo, pattern
fills, instrument parameters, mix levels), so a model has to learn the style, not a
waveform. ``song`` strings styles together into a multi-minute track whose genre changes,
which makes a genre timeline worth looking at.
"""

from __future__ import annotations

import numpy as np

__all__ = ["STYLES", "CODECS", "clip", "song", "write_audio"]

#: style → tempo range (bpm), beats per bar, swing, mode intervals, register (MIDI root)
STYLES: dict[str, dict] = {
    "ambient": {"bpm": (60, 76), "meter": 4, "swing": 0.0, "mode": (0, 2, 4, 7, 9), "root": 48},
    "techno": {"bpm": (124, 136), "meter": 4, "swing": 0.0, "mode": (0, 3, 5, 7, 10), "root": 36},
    "rock": {"bpm": (100, 132), "meter": 4, "swing": 0.0, "mode": (0, 3, 5, 7, 10), "root": 40},
    "jazz": {"bpm": (110, 160), "meter": 4, "swing": 0.33, "mode": (0, 2, 3, 5, 7, 9, 10), "root": 43},
    "folk": {"bpm": (84, 112), "meter": 3, "swing": 0.0, "mode": (0, 2, 4, 5, 7, 9, 11), "root": 50},
}


#: extension → (libsndfile format, subtype)
CODECS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"), "mp3": ("MP3", "MPEG_LAYER_III")}


def write_audio(path: str, y: np.ndarray, *, sr: int = 22050, block: int = 1 << 16) -> str:
    """Write ``y`` (``[n]`` or ``[n, channels]``) with the codec of ``path``'s extension.

    Written in blocks: libsndfile's Vorbis encoder crashes (SIGSEGV) when handed minutes
    of audio in one call.
    """
    import os

    import soundfile as sf

    ext = os.path.splitext(path)[1].lstrip(".").lower()
    fmt, subtype = CODECS[ext]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    channels = 1 if y.ndim == 1 else y.shape[1]
    with sf.SoundFile(path, "w", samplerate=sr, channels=channels, format=fmt, subtype=subtype) as fh:
        for start in range(0, len(y), block):
            fh.write(y[start: start + block])
    return path


def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _tone(f0: float, n: int, sr: int, *, harmonics, rng, decay: float, attack: float = 0.005) -> np.ndarray:
    t = np.arange(n) / sr
    wave = np.zeros(n)
    for k, amp in enumerate(harmonics, start=1):
        if f0 * k < sr / 2:
            wave += amp * np.sin(2 * np.pi * f0 * k * t * (1 + rng.normal(0, 0.0008)) + rng.uniform(0, 6.3))
    env = np.minimum(1.0, t / max(attack, 1e-4)) * np.exp(-t * decay)
    return wave * env


def _drum(kind: str, n: int, sr: int, rng) -> np.ndarray:
    t = np.arange(n) / sr
    if kind == "kick":
        f = 50 + 90 * np.exp(-t * 30)
        return np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t * 9)
    if kind == "snare":
        return 0.6 * rng.normal(0, 1, n) * np.exp(-t * 18) + 0.3 * np.sin(2 * np.pi * 190 * t) * np.exp(-t * 25)
    if kind == "hat":
        noise = rng.normal(0, 1, n)
        noise = np.diff(noise, prepend=0)  # brighter
        return 0.25 * noise * np.exp(-t * 60)
    if kind == "ride":
        return 0.2 * (np.sin(2 * np.pi * 5100 * t) + rng.normal(0, 0.6, n)) * np.exp(-t * 9)
    raise ValueError(kind)


def _add(buf: np.ndarray, start: int, sig: np.ndarray, gain: float) -> None:
    if start >= len(buf):
        return
    end = min(len(buf), start + len(sig))
    buf[start:end] += gain * sig[: end - start]


def clip(style: str, seconds: float, *, sr: int = 22050, seed: int = 0) -> np.ndarray:
    """One clip of ``style``.

    Parameters
    ----------
    style : str
        A key of :data:`STYLES`.
    seconds : float
        Length.
    sr : int
        Sample rate.
    seed : int
        Makes the clip (key, tempo, patterns, mix) reproducible.

    Returns
    -------
    np.ndarray
        ``[int(seconds * sr)]`` float32 in [-1, 1].
    """
    s = STYLES[style]
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    out = np.zeros(n)
    bpm = rng.uniform(*s["bpm"])
    beat = 60.0 / bpm
    root = s["root"] + int(rng.integers(-3, 4))
    mode = s["mode"]
    meter = s["meter"]
    n_beats = int(seconds / beat) + 1

    def at(b: float) -> int:
        whole, frac = divmod(b, 1.0)
        if s["swing"] and abs(frac - 0.5) < 1e-6:
            frac = 0.5 + s["swing"] * 0.5
        return int((whole + frac) * beat * sr)

    # chord progression: one chord per bar, degrees from the mode
    degrees = rng.choice(len(mode), size=max(1, n_beats // meter + 1))
    bright = rng.uniform(0.6, 1.4)
    for b in range(n_beats):
        bar, pos = divmod(b, meter)
        chord_root = root + mode[degrees[bar]]
        if style == "ambient":
            if pos == 0:  # long pads, soft bell melody
                for iv in (0, 4 if 4 in mode else 3, 7, 11 if rng.random() < 0.5 else 12):
                    pad = _tone(_hz(chord_root + 12 + iv), int(meter * beat * sr * 1.5), sr,
                                harmonics=(1, 0.3 * bright, 0.1), rng=rng, decay=0.6, attack=0.8)
                    _add(out, at(b), pad, 0.18)
            if rng.random() < 0.35:
                note = root + 24 + mode[int(rng.integers(len(mode)))]
                _add(out, at(b + 0.5), _tone(_hz(note), int(2 * beat * sr), sr, harmonics=(1, 0, 0.4), rng=rng, decay=1.5), 0.12)
        elif style == "techno":
            _add(out, at(b), _drum("kick", int(0.4 * sr), sr, rng), 0.9)
            _add(out, at(b + 0.5), _drum("hat", int(0.1 * sr), sr, rng), 0.6)
            if pos in (1, 3) and rng.random() < 0.8:
                _add(out, at(b), _drum("snare", int(0.2 * sr), sr, rng), 0.25)
            for half in (0.25, 0.75):  # acid-ish off-beat bass
                note = chord_root + (12 if rng.random() < 0.3 else 0)
                bass = _tone(_hz(note), int(0.2 * sr), sr, harmonics=(1, 0.8 * bright, 0.6, 0.5, 0.4, 0.3), rng=rng, decay=10)
                _add(out, at(b + half), np.tanh(2.5 * bass), 0.3)
        elif style == "rock":
            _add(out, at(b), _drum("kick" if pos in (0, 2) else "snare", int(0.3 * sr), sr, rng), 0.7)
            for eighth in (0.0, 0.5):
                _add(out, at(b + eighth), _drum("hat", int(0.08 * sr), sr, rng), 0.4)
                power = sum(_tone(_hz(chord_root + 12 + iv), int(beat * sr * 0.5), sr,
                                  harmonics=(1, 0.7, 0.5, 0.4, 0.3, 0.2, 0.15), rng=rng, decay=2.0) for iv in (0, 7, 12))
                _add(out, at(b + eighth), np.tanh(4.0 * bright * power) * 0.8, 0.35)
        elif style == "jazz":
            _add(out, at(b), _drum("ride", int(0.5 * sr), sr, rng), 0.35)
            if pos in (1, 3):
                _add(out, at(b + 0.5), _drum("ride", int(0.3 * sr), sr, rng), 0.25)
            walk = chord_root - 12 + mode[int(rng.integers(len(mode)))]  # walking bass
            _add(out, at(b), _tone(_hz(walk), int(beat * sr), sr, harmonics=(1, 0.5, 0.2), rng=rng, decay=3), 0.5)
            if pos == 0 or rng.random() < 0.25:  # comped 7th chords, soft and mellow
                for iv in (mode[2 % len(mode)], mode[4 % len(mode)], 10):
                    _add(out, at(b + rng.choice([0, 0.5])), _tone(_hz(chord_root + 12 + iv), int(0.6 * beat * sr), sr,
                                                                harmonics=(1, 0.2, 0.05), rng=rng, decay=4), 0.15)
        elif style == "folk":
            if pos == 0:
                _add(out, at(b), _tone(_hz(chord_root - 12), int(meter * beat * sr), sr, harmonics=(1, 0.4), rng=rng, decay=1.2), 0.35)
            for k, iv in enumerate((0, 4, 7)):  # plucked arpeggio, waltz time
                pluck = _tone(_hz(chord_root + 12 + iv + (12 if pos == 2 and k == 2 else 0)), int(0.8 * sr), sr,
                              harmonics=(1, 0.6, 0.45, 0.3, 0.2, 0.1), rng=rng, decay=5, attack=0.002)
                _add(out, at(b + k / 3), pluck, 0.22)
    out += rng.normal(0, rng.uniform(0.001, 0.01), n)  # room/recording noise
    peak = np.abs(out).max()
    out = out / (peak + 1e-9) * rng.uniform(0.5, 0.95)
    return out.astype(np.float32)


def song(styles: list[str], *, section_seconds: float = 40.0, sr: int = 22050, seed: int = 0) -> np.ndarray:
    """A long track made of sections of ``styles`` (short cross-fades between them)."""
    fade = int(1.0 * sr)
    parts = [clip(st, section_seconds, sr=sr, seed=seed * 100 + i) for i, st in enumerate(styles)]
    out = parts[0]
    for p in parts[1:]:
        ramp = np.linspace(0, 1, fade, dtype=np.float32)
        head = out[:-fade]
        mix = out[-fade:] * (1 - ramp) + p[:fade] * ramp
        out = np.concatenate([head, mix, p[fade:]])
    return out
