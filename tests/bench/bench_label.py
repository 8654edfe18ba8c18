"""Benchmark: `mgr label` end to end vs `mgr extract` on the same full-length songs, and
peak memory of the Ray processes for a catalog 5x larger.

Builds catalogs of copies of the real songs of ../shared/data/music (mp3 44.1 kHz stereo
and ogg 22 kHz mono, 2.5-5 min each), a model directory (paper CNN or CRNN, random
weights: inference costs the same as trained), then runs each command in a subprocess
(fresh embedded Ray, as a user would) while sampling the PSS/RSS of the process tree:

  * `mgr extract CATALOG` and `mgr label CATALOG` alternately, ``--repeats`` times each,
  * `mgr label` on a catalog ``--scale`` times larger,

and prints one JSON line: files/s and audio-minutes/s of both (wall clock of the command
and the in-pipeline time of its summary), their ratio, and the peak memory of both sizes.

    .venv/bin/python tests/bench/bench_label.py [--copies 8] [--scale 5] [--arch cnn]

With ``--excerpts N`` it instead compares, on ``--copies`` copies of the songs (e.g. 20: 260
files), `mgr label --max-windows N` against labeling every window, and prints files/s,
audio-minutes/s and the audio-minutes decoded vs. skipped of both:

    .venv/bin/python tests/bench/bench_label.py --excerpts 3 --copies 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, music_dir  # noqa: E402


def build_catalog(dest: Path, copies: int) -> int:
    """``copies`` copies of every song (hard links when possible); returns the file count."""
    songs = sorted(p for p in music_dir().iterdir() if p.suffix in (".mp3", ".ogg"))
    marker = dest / f".built-v2-{copies}"
    if not marker.exists():
        shutil.rmtree(dest, ignore_errors=True)
        for c in range(copies):
            d = dest / f"copy{c:03d}"
            d.mkdir(parents=True)
            for p in songs:
                try:
                    os.link(p, d / f"c{c:03d}_{p.name}")
                except OSError:
                    shutil.copy(p, d / f"c{c:03d}_{p.name}")
        marker.touch()
    return copies * len(songs)


def make_model(path: Path, arch: str) -> None:
    import torch

    from mgr.config import PRESETS
    from mgr.audio.features import pad_value
    from mgr.models import build_model
    from mgr.models.modeldir import save_model_dir

    cfg = PRESETS["paper"]
    genres = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]
    torch.manual_seed(0)
    model = build_model(arch, n_classes=len(genres), n_mels=cfg.n_mels)
    spec = {"name": f"bench-{arch}", "architecture": arch,
            "model_config": {"n_classes": len(genres), "n_mels": cfg.n_mels}, "feature_config": cfg.to_dict(),
            "genres": genres, "window_frames": cfg.clip_frames, "pad_value": pad_value(cfg),
            "normalization": None, "metrics": {}, "provenance": {"bench": True}}
    save_model_dir(str(path), model=model, spec=spec)


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (from /proc; no psutil needed)."""
    parent: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parent.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parent.get(pid, []))
    return out


def _pss_rss_kib(pid: int) -> tuple[int, int]:
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


class TreeMemory:
    """Samples the summed PSS (shared pages split between their users) and RSS of a
    process and all its descendants (the driver, GCS, raylet, workers)."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        self.pid, self.every = pid, every
        self.peak_pss = self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pss = rss = 0
            for p in _descendants(self.pid):
                a, b = _pss_rss_kib(p)
                pss, rss = pss + a, rss + b
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self._stop.wait(self.every)

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._thread.join()
        return self.peak_pss / 1024, self.peak_rss / 1024


def run(cmd: list[str]) -> dict:
    out_dir = Path(cmd[3])
    shutil.rmtree(out_dir, ignore_errors=True)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mem = TreeMemory(proc.pid)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t
    pss, rss = mem.stop()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:2])} failed:\n{stderr[-3000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "summary": summary, "peak_pss_mib": pss, "peak_rss_mib": rss}


def audio_minutes(res: dict) -> float:
    s = res["summary"]
    if "audio_minutes" in s.get("run", {}):
        return s["run"]["audio_minutes"]
    return s["counts"]["audio_hours"] * 60


def rates(res: dict, files: int) -> dict:
    minutes = audio_minutes(res)
    inner = res["summary"]["run"]["seconds"]
    return {"wall_s": round(res["wall_s"], 2), "pipeline_s": round(inner, 2),
            "files_per_s": round(files / res["wall_s"], 3), "audio_min_per_s": round(minutes / res["wall_s"], 3),
            "pipeline_files_per_s": round(files / inner, 3), "pipeline_audio_min_per_s": round(minutes / inner, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=8, help="copies of the 13 songs in the base catalog")
    ap.add_argument("--scale", type=int, default=5, help="the memory catalog is this many times larger")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--arch", choices=["cnn", "crnn"], default="cnn")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mgr-bench-label"))
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--excerpts", type=int, default=None, metavar="N",
                    help="compare --max-windows N with all windows instead of label with extract")
    args = ap.parse_args()
    if args.excerpts:
        return excerpts(args)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    n = build_catalog(work / "catalog", args.copies)
    model = work / f"model-{args.arch}"
    make_model(model, args.arch)
    exe = str(Path(sys.executable).with_name("mgr"))
    label_cmd = [exe, "label", str(work / "catalog"), str(work / "labels"), "--model", str(model), "--json"]
    extract_cmd = [exe, "extract", str(work / "catalog"), str(work / "features"), "--json"]
    ext, lab = [], []
    for _ in range(args.repeats):
        ext.append(rates(run(extract_cmd), n))
        lab.append(rates(run(label_cmd), n))
        shutil.rmtree(work / "features", ignore_errors=True)
    base_mem = run(label_cmd)
    med = {k: statistics.median(r[k] for r in lab) for k in lab[0]}
    med_e = {k: statistics.median(r[k] for r in ext) for k in ext[0]}
    result = {
        "bench": "label",
        "arch": args.arch,
        "cores": os.cpu_count(),
        "files": n,
        "audio_minutes": round(audio_minutes(base_mem), 1),
        "label": med,
        "extract": med_e,
        "ratio_files_per_s_wall": round(med["files_per_s"] / med_e["files_per_s"], 3),
        "ratio_pipeline": round(med["pipeline_files_per_s"] / med_e["pipeline_files_per_s"], 3),
        "runs": {"label": lab, "extract": ext},
        "peak_pss_mib": round(base_mem["peak_pss_mib"], 1),
        "peak_rss_mib": round(base_mem["peak_rss_mib"], 1),
    }
    if not args.skip_scale:
        big = args.copies * args.scale
        nb = build_catalog(work / f"catalog-x{args.scale}", big)
        res = run([exe, "label", str(work / f"catalog-x{args.scale}"), str(work / "labels-big"),
                   "--model", str(model), "--json"])
        result["scaled"] = {"files": nb, **rates(res, nb), "peak_pss_mib": round(res["peak_pss_mib"], 1),
                            "peak_rss_mib": round(res["peak_rss_mib"], 1)}
        result["memory_growth_pss"] = round(res["peak_pss_mib"] / base_mem["peak_pss_mib"] - 1, 3)
        result["memory_growth_rss"] = round(res["peak_rss_mib"] / base_mem["peak_rss_mib"] - 1, 3)
        shutil.rmtree(work / "labels-big", ignore_errors=True)
    shutil.rmtree(work / "labels", ignore_errors=True)
    print(json.dumps(result))


def excerpts(args) -> None:
    """`mgr label --max-windows N` vs. all windows on the same catalog, alternately."""
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    n = build_catalog(work / f"catalog-{args.copies}", args.copies)
    model = work / f"model-{args.arch}"
    make_model(model, args.arch)
    exe = str(Path(sys.executable).with_name("mgr"))
    base = [exe, "label", str(work / f"catalog-{args.copies}"), str(work / "labels-excerpts"), "--model", str(model),
            "--json"]
    runs: dict[str, list] = {"all_windows": [], f"max_windows_{args.excerpts}": []}
    for _ in range(args.repeats):
        for key, extra in (("all_windows", []), (f"max_windows_{args.excerpts}", ["--max-windows", str(args.excerpts)])):
            res = run(base + extra)
            r = res["summary"]["run"]
            runs[key].append({**rates(res, n), "audio_min_decoded": r.get("audio_minutes_decoded"),
                              "audio_min_skipped": r.get("audio_minutes_skipped")})
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in runs.items()}
    shutil.rmtree(work / "labels-excerpts", ignore_errors=True)
    fast, full = med[f"max_windows_{args.excerpts}"], med["all_windows"]
    print(json.dumps({"bench": "label-excerpts", "arch": args.arch, "cores": os.cpu_count(), "files": n,
                      "median": med, "speedup_wall": round(full["wall_s"] / fast["wall_s"], 3),
                      "speedup_pipeline": round(full["pipeline_s"] / fast["pipeline_s"], 3), "runs": runs}))


if __name__ == "__main__":
    main()
