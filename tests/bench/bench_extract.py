"""Benchmark: `mgr extract` end to end (Ray start-up included) vs a plain single-process loop.

Builds a corpus once (default: 1224 30-s wav clips cut from ../shared/data/music plus 80
full-length mp3/ogg songs copied from it), then in the same run times
  * baseline: for each file librosa.load(sr=22050) + melspectrogram + log (one process),
  * mgr: the `mgr extract` command in a subprocess (fresh embedded Ray, writes Parquet),
and prints one JSON line with both times and the ratio.

    .venv/bin/python tests/bench/bench_extract.py [--clips 1224] [--songs 80] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, music_dir  # noqa: E402


def build_corpus(dest: Path, *, clips: int, songs: int) -> list[Path]:
    import soundfile as sf

    marker = dest / f".built-{clips}-{songs}"
    if marker.exists():
        return sorted(p for p in dest.rglob("*") if p.suffix in (".wav", ".mp3", ".ogg"))
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "clips").mkdir(parents=True)
    (dest / "songs").mkdir(parents=True)
    src = sorted(p for p in music_dir().iterdir() if p.suffix in (".mp3", ".ogg"))
    # 30-s wav clips at 22050 Hz mono, cut from the real recordings (like GTZAN clips)
    decoded = []
    for p in src:
        y, sr = sf.read(p, dtype="float32", always_2d=True)
        decoded.append((y.mean(axis=1), sr))
    i = 0
    while i < clips:
        y, sr = decoded[i % len(decoded)]
        n = 30 * sr
        start = (i // len(decoded)) * sr * 7 % max(1, len(y) - n)
        seg = y[start:start + n]
        if len(seg) < n:
            seg = np.pad(seg, (0, n - len(seg)))
        sf.write(dest / "clips" / f"clip{i:05d}.wav", seg, sr, subtype="PCM_16")
        i += 1
    for j in range(songs):
        p = src[j % len(src)]
        shutil.copy(p, dest / "songs" / f"song{j:03d}{p.suffix}")
    marker.touch()
    return sorted(p for p in dest.rglob("*") if p.suffix in (".wav", ".mp3", ".ogg"))


def baseline(files: list[Path]) -> float:
    import librosa

    t = time.perf_counter()
    for f in files:
        y, sr = librosa.load(f, sr=22050)
        s = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048, hop_length=1024, n_mels=128)
        s[s == 0] = 1e-6
        np.log(s)
    return time.perf_counter() - t


def run_mgr(corpus: Path, out: Path) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    exe = Path(sys.executable).with_name("mgr")
    t = time.perf_counter()
    proc = subprocess.run([str(exe), "extract", str(corpus), str(out), "--json"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"mgr extract failed:\n{proc.stderr[-3000:]}")
    return elapsed, json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=1224)
    ap.add_argument("--songs", type=int, default=80)
    ap.add_argument("--corpus", default=os.path.join(tempfile.gettempdir(), "mgr-bench-corpus"))
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    files = build_corpus(corpus, clips=args.clips, songs=args.songs)
    audio_min = None
    out = Path(tempfile.mkdtemp(prefix="mgr-bench-out-"))
    try:
        t_mgr, summary = run_mgr(corpus, out / "features")
        t_base = None if args.skip_baseline else baseline(files)
        audio_min = summary["counts"]["audio_hours"] * 60
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({
        "bench": "extract",
        "files": len(files),
        "audio_minutes": round(audio_min, 1),
        "cores": os.cpu_count(),
        "baseline_s": None if t_base is None else round(t_base, 2),
        "mgr_extract_s": round(t_mgr, 2),
        "mgr_in_pipeline_s": summary["run"]["seconds"],
        "speedup": None if t_base is None else round(t_base / t_mgr, 3),
        "errors": summary["counts"]["errors"],
    }))


if __name__ == "__main__":
    main()
