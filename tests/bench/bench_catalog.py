"""Benchmark: the catalog jobs' driver at scale (issue 15). Not a test; prints JSON lines.

1. Resume: a labels OUTPUT padded to N done rows (copies of a real run's rows, under other
   uris, in parts of 1000 rows) plus a manifest of those N uris and a few dozen new files;
   ``mgr label manifest:... OUTPUT`` labels only the new files. Run at N and 4N, and once
   on an empty OUTPUT (the same new files) as the baseline. Each run is a fresh process
   (its own embedded Ray, as a user would run it); reported: the driver's peak RSS (its own
   process, not Ray's), its growth above the baseline, and the wall time.
2. Planning: a 1M-row manifest (locally, and on a moto S3 server in 1000-row Parquet
   parts), OUTPUT empty: the time from the start of the command to its plan line and to
   the first part file written (the first block of files read and labeled). The uris
   name files that do not exist (each becomes an error row: reading is attempted, that is
   what the first block costs); the run is stopped once the first part exists.

    .venv/bin/python tests/bench/bench_catalog.py [--n 100000] [--new 24] [--planning-rows 1000000]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, music_dir  # noqa: E402
from bench_label import make_model  # noqa: E402

ROWS_PER_PART = 1000

#: the driver of one run: label_catalog in a thread, the main thread watches OUTPUT
_DRIVER = r"""
import json, os, resource, sys, threading, time
t0 = time.time()
catalog, out, model, endpoint, stop_at_first = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] or None, sys.argv[5] == "1"
from mgr.io.location import Location
from mgr.pipelines.catalog_config import LabelConfig
from mgr.pipelines import label as label_mod
from mgr.pipelines.label import label_catalog
from mgr.pipelines.output import DatasetOutput
marks = {}
def timed(name, fn):
    def wrapper(*a, **k):
        t = time.time()
        try:
            return fn(*a, **k)
        finally:
            marks[name] = round(marks.get(name, 0) + time.time() - t, 2)
    return wrapper
DatasetOutput.plan = timed("planner_plan_s", DatasetOutput.plan)
DatasetOutput.complete = timed("check_s", DatasetOutput.complete)
label_mod.render_report = timed("report_s", label_mod.render_report)
def log(line):
    marks.setdefault("plan_s", round(time.time() - t0, 2))
box = {}
def run():
    try:
        box["summary"] = label_catalog(LabelConfig(catalog, out, model_dir=model, endpoint_url=endpoint), log=log,
                                       progress=False)
    except BaseException as exc:
        box["error"] = repr(exc)
th = threading.Thread(target=run, daemon=True)
th.start()
loc = Location(out, endpoint_url=endpoint)
while th.is_alive():
    th.join(0.2)
    if "first_part_s" not in marks:
        try:
            loc.fs.invalidate_cache(loc.path)
            if any(p.rsplit("/", 1)[-1].startswith("part-") for p in loc.fs.ls(loc.path)) and "plan_s" in marks:
                marks["first_part_s"] = round(time.time() - t0, 2)
                if stop_at_first:
                    break
        except (OSError, FileNotFoundError):
            pass
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec (the bench's own memory)
peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")) / 1024
res = {"wall_s": round(time.time() - t0, 2), "driver_peak_rss_mb": round(peak, 1), **marks}
if "summary" in box:
    s = box["summary"]
    res.update(files=s["run"]["files"], skipped=s["run"]["files_skipped_already_done"], complete=s["complete"],
               output_rows=s["counts"]["files"], pipeline_s=s["run"]["seconds"])
if "error" in box:
    res["error"] = box["error"][:500]
print("RESULT " + json.dumps(res), flush=True)
os._exit(0)
"""


def _env(extra: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    env.update(extra or {})
    return env


def run_driver(catalog: str, out: str, model: str, *, endpoint: str = "", stop_at_first: bool = False,
               env: dict | None = None) -> dict:
    argv = [sys.executable, "-c", _DRIVER, catalog, out, model, endpoint, "1" if stop_at_first else "0"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(env), cwd=ROOT, timeout=3600)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"error": proc.stderr[-2000:]}
    return json.loads(line[len("RESULT "):])


def new_files(work: Path, n: int) -> list[str]:
    """``n`` short real excerpts (copies of the first 20 s of a real recording)."""
    import soundfile as sf

    src = sorted(p for p in music_dir().iterdir() if p.suffix == ".ogg")[0]
    y, sr = sf.read(str(src), frames=20 * 22050, dtype="float32")
    dest = work / "new"
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = dest / f"new{i:03d}.wav"
        sf.write(str(p), y, sr)
        paths.append(str(p))
    return paths


def real_rows(work: Path, model: str) -> tuple:
    """A real labels run over two real songs; returns (its table, its schema)."""
    import pyarrow.parquet as pq

    songs = work / "songs"
    songs.mkdir(parents=True, exist_ok=True)
    for p in sorted(p for p in music_dir().iterdir() if p.suffix == ".mp3")[:2]:
        shutil.copy(p, songs / p.name)
    res = run_driver(str(songs), str(work / "template"), model)
    assert res.get("complete"), res
    t = pq.read_table(str(work / "template"))
    return t, t.schema


def padded_output(dest: Path, template, n: int) -> list[str]:
    """OUTPUT with ``n`` rows: copies of the real rows under other uris, 1000 rows a part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mgr.datasets.labelset import part_name

    dest.mkdir(parents=True)
    rows = template.filter(pa.compute.is_null(template.column("error")))
    uris = [f"/catalog/pad/{i // 10000:04d}/t{i:08d}.mp3" for i in range(n)]
    for start in range(0, n, ROWS_PER_PART):
        chunk = uris[start: start + ROWS_PER_PART]
        idx = pa.array([i % rows.num_rows for i in range(len(chunk))])
        t = rows.take(idx)
        t = t.set_column(t.schema.get_field_index("uri"), t.schema.field("uri"), pa.array(chunk, pa.string()))
        pq.write_table(t, str(dest / part_name(chunk)), compression="zstd")
    return uris


def write_manifest(path: Path, uris: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"uri": pa.array(uris, pa.string())}), str(path))


def resume_bench(work: Path, model: str, n: int, n_new: int) -> list[dict]:
    template, _ = real_rows(work, model)
    new = new_files(work, n_new)
    out = []
    for label, size in (("baseline", 0), ("N", n), ("4N", 4 * n)):
        case = work / f"resume-{label}"
        shutil.rmtree(case, ignore_errors=True)
        uris = padded_output(case / "labels", template, size) if size else []
        if not size:
            (case / "labels").mkdir(parents=True)
        write_manifest(case / "catalog.parquet", uris + new)
        res = run_driver(f"manifest:{case / 'catalog.parquet'}", str(case / "labels"), model)
        res.update(bench="catalog_resume", case=label, done_rows=size, new_files=n_new)
        print(json.dumps(res), flush=True)
        out.append(res)
        shutil.rmtree(case, ignore_errors=True)
    base, one, four = out
    if all("driver_peak_rss_mb" in r for r in out):
        g1 = one["driver_peak_rss_mb"] - base["driver_peak_rss_mb"]
        g4 = four["driver_peak_rss_mb"] - base["driver_peak_rss_mb"]
        print(json.dumps({"bench": "catalog_resume_ratio", "n": n,
                          "peak_ratio_4N_over_N": round(four["driver_peak_rss_mb"] / one["driver_peak_rss_mb"], 3),
                          "growth_over_baseline_mb": {"N": round(g1, 1), "4N": round(g4, 1)},
                          "time_ratio_4N_over_N": round(four["wall_s"] / one["wall_s"], 3)}), flush=True)
    return out


def planning_bench(work: Path, model: str, rows: int) -> None:
    uris = [f"/nowhere/catalog/{i // 10000:04d}/t{i:08d}.mp3" for i in range(rows)]
    case = work / "plan-local"
    shutil.rmtree(case, ignore_errors=True)
    write_manifest(case / "catalog.parquet", uris)
    res = run_driver(f"manifest:{case / 'catalog.parquet'}", str(case / "labels"), model, stop_at_first=True)
    res.update(bench="catalog_planning", where="local", manifest_rows=rows, manifest_files=1)
    print(json.dumps(res), flush=True)
    shutil.rmtree(case, ignore_errors=True)

    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs
    from moto.server import ThreadedMotoServer

    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(creds)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
        fs.mkdir("bench")
        s3_uris = [f"s3://bench/catalog/{i // 10000:04d}/t{i:08d}.mp3" for i in range(rows)]
        t = time.time()
        for start in range(0, rows, ROWS_PER_PART):
            with fs.open(f"bench/manifest/part-{start // ROWS_PER_PART:05d}.parquet", "wb") as fh:
                pq.write_table(pa.table({"uri": pa.array(s3_uris[start: start + ROWS_PER_PART], pa.string())}), fh)
        upload = round(time.time() - t, 1)
        res = run_driver("manifest:s3://bench/manifest", "s3://bench/labels", model, endpoint=endpoint,
                         stop_at_first=True, env=creds)
        res.update(bench="catalog_planning", where="moto-s3", manifest_rows=rows,
                   manifest_files=rows // ROWS_PER_PART, upload_s=upload)
        print(json.dumps(res), flush=True)
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="done rows at 1x (4x runs too)")
    ap.add_argument("--new", type=int, default=24, help="new files to label in each resume run")
    ap.add_argument("--planning-rows", type=int, default=1_000_000, help="rows of the planning manifest")
    ap.add_argument("--skip-resume", action="store_true")
    ap.add_argument("--skip-planning", action="store_true")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mgr-bench-catalog-"))
    work.mkdir(parents=True, exist_ok=True)
    model = str(work / "model")
    if not (work / "model" / "model.json").exists():
        make_model(work / "model", "cnn")
    try:
        if not args.skip_resume:
            resume_bench(work, model, args.n, args.new)
        if not args.skip_planning:
            planning_bench(work, model, args.planning_rows)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
