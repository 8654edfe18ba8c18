"""Faults while the jobs run: S3 errors (transient and permanent), the driver interrupted,
two runs on one OUTPUT, a worker node removed from a multi-node Ray, a training worker killed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest

from mgr.datasets import labelset

from mgr.io.location import LOCK_NAME
from mgr.cli import main as cli_main
from mgr.errors import JobError
from mgr.pipelines.catalog_config import ExtractConfig, LabelConfig
from mgr.pipelines.extract import extract
from mgr.datasets.featureset import MANIFEST_NAME
from mgr.pipelines.label import label_catalog
from tests.audiogen import music_like, write_audio
from tests.faults import FaultProxy, Rule, model_dir, write_long_wav

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_SONGS = 12


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}  # not the session Ray
    return {**env, "PYTHONPATH": ROOT, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def _parts(path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(path) if n.startswith("part-"))
    except FileNotFoundError:
        return []


def _wait_for(cond, *, timeout: float, proc=None, step: float = 0.02) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(step)
    return False


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """Twelve 10-minute songs (8 kHz wav, cheap to write): long enough to stop a run midway."""
    root = tmp_path_factory.mktemp("songs")
    for i in range(N_SONGS):
        write_long_wav(str(root / "cat" / f"song{i:02d}.wav"), seconds=600, sr=8000)
    return root / "cat", model_dir(root / "model")


# ------------------------------------------------------------------------------ S3 faults

def _small_catalog(fs, bucket, tmp_path, n=4):
    for i in range(n):
        p = write_audio(str(tmp_path / f"c{i}.flac"), music_like(("drone", "chime")[i % 2], 2.0, seed=i))
        fs.put(p, f"{bucket}/cat/c{i}.flac")


@pytest.mark.timeout(240)
def test_s3_throttling_and_transient_errors_are_retried(ray_local, s3_bucket, s3_endpoint, tmp_path):
    fs, bucket = s3_bucket
    _small_catalog(fs, bucket, tmp_path)
    rules = [
        Rule(503, "SlowDown", methods=("GET",), query="list-type=2", limit=1),  # the listing
        Rule(503, "SlowDown", methods=("GET", "HEAD"), path=r"/cat/c\d\.flac$", every=2, limit=3),  # reads
        Rule(500, "InternalError", methods=("PUT",), path=r"/feat/part-", limit=2),  # writes
        Rule(503, "SlowDown", methods=("PUT",), path=r"/labels/part-", limit=2),
        Rule(503, "ServiceUnavailable", methods=("GET", "HEAD"), path=r"/model/", limit=1),
    ]
    fs.put(model_dir(tmp_path / "model"), f"{bucket}/model", recursive=True)
    with FaultProxy(s3_endpoint, rules) as proxy:
        s = extract(ExtractConfig(f"s3://{bucket}/cat", f"s3://{bucket}/feat", endpoint_url=proxy.url))
        assert s["counts"]["files"] == 4 and s["counts"]["errors"] == 0
        lab = label_catalog(LabelConfig(f"s3://{bucket}/cat", f"s3://{bucket}/labels", model_dir=f"s3://{bucket}/model", endpoint_url=proxy.url), log=lambda _l: None)
        assert lab["complete"] and lab["run"]["files"] == 4 and lab["run"]["errors"] == 0
        fired = [r.fired for r in rules]
    assert fired == [1, 3, 2, 2, 1], fired  # every injected fault happened, and was survived
    fs.invalidate_cache()
    assert pq.read_table(f"{bucket}/feat", filesystem=fs).num_rows == 4
    assert pq.read_table(f"{bucket}/labels", filesystem=fs).num_rows == 4
    assert fs.exists(f"{bucket}/feat/{MANIFEST_NAME}") and fs.exists(f"{bucket}/labels/{labelset.MARKER_NAME}")


def _mgr_error_line(err: str) -> str:
    """mgr's own one-line error among whatever Ray logged to stderr."""
    lines = [x for x in err.splitlines() if x.startswith("mgr ")]
    assert len(lines) == 1, err[-3000:]
    assert len(lines[0]) < 400 and "ray::" not in lines[0] and "Traceback" not in lines[0], lines[0]
    return lines[0]


def _permanent_write_failure(fs, bucket, s3_endpoint, capsys, argv, expected):
    """Run one command whose part uploads all answer 403; it must fail with one clear line."""
    rules = [Rule(403, "AccessDenied", methods=("PUT", "POST"), path=r"/(feat|labels)/part-", limit=None)]
    with FaultProxy(s3_endpoint, rules) as proxy:
        code = cli_main([*argv, "--endpoint-url", proxy.url])
        line = _mgr_error_line(capsys.readouterr().err)
        assert code == 2 and expected in line and "Access Denied" in line, line
        assert rules[0].fired >= 1
    fs.invalidate_cache()


# Extraction and labeling each get a fresh proxy: run back to back through one proxy, the
# second command's requests stalled behind the first one's refused uploads (see the note).
@pytest.mark.timeout(240)
def test_s3_permanent_write_failure_extract_is_a_clear_failure_never_complete(ray_local, s3_bucket, s3_endpoint,
                                                                              tmp_path, capsys):
    fs, bucket = s3_bucket
    _small_catalog(fs, bucket, tmp_path)
    _permanent_write_failure(fs, bucket, s3_endpoint, capsys,
                             ["extract", f"s3://{bucket}/cat", f"s3://{bucket}/feat"], "extraction failed while writing")
    # nothing claims to be complete, and the lock was released
    for name in (f"feat/{MANIFEST_NAME}", f"feat/{LOCK_NAME}"):
        assert not fs.exists(f"{bucket}/{name}"), name


@pytest.mark.timeout(240)
def test_s3_permanent_write_failure_label_is_a_clear_failure_never_complete(ray_local, s3_bucket, s3_endpoint,
                                                                            tmp_path, capsys):
    fs, bucket = s3_bucket
    _small_catalog(fs, bucket, tmp_path)
    model = model_dir(tmp_path / "model")
    _permanent_write_failure(fs, bucket, s3_endpoint, capsys,
                             ["label", f"s3://{bucket}/cat", f"s3://{bucket}/labels", "--model", model], "labeling into")
    for name in (f"labels/{labelset.MARKER_NAME}", f"labels/{LOCK_NAME}"):
        assert not fs.exists(f"{bucket}/{name}"), name


# ------------------------------------------------------------------ interrupted drivers

@pytest.fixture
def sigint_handled():
    """Children started by the test handle SIGINT (Ctrl-C) as a terminal's would.

    A shell without job control starts a background command (``make test &``, ``nohup``)
    with SIGINT ignored, and an ignored signal stays ignored across exec: every child would
    ignore the test's SIGINT and simply finish. A handled signal is reset to the default.
    """
    before = signal.getsignal(signal.SIGINT)
    if before == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.timeout(240)
def test_sigint_to_mgr_extract_then_rerun_finishes_without_redoing(ray_local, songs, tmp_path, sigint_handled):
    cat, _ = songs
    out = str(tmp_path / "features")
    proc = subprocess.Popen([sys.executable, "-m", "mgr.cli", "extract", str(cat), out, "--num-cpus", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        started = _wait_for(lambda: _parts(out), timeout=150, proc=proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert started, err[-2000:]
    assert proc.returncode == 130 and "interrupted; re-run the same command to resume" in err, err[-2000:]
    assert not os.path.exists(os.path.join(out, MANIFEST_NAME))  # never reported complete
    assert not os.path.exists(os.path.join(out, LOCK_NAME))
    kept = {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in _parts(out)}
    done = pq.read_table(out, columns=["uri"]).num_rows
    assert 0 < done < N_SONGS, "the interrupt came after the end: nothing to resume"

    s = extract(ExtractConfig(str(cat), out))
    assert s["run"]["files_skipped_already_done"] == done and s["run"]["files_extracted"] == N_SONGS - done
    uris = pq.read_table(out, columns=["uri"]).column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == N_SONGS and s["counts"]["errors"] == 0
    assert all(os.stat(os.path.join(out, p)).st_mtime_ns == m for p, m in kept.items())  # not rewritten


_LABEL_DRIVER = """
import sys
from mgr.pipelines.catalog_config import LabelConfig
from mgr.pipelines.label import label_catalog
try:
    label_catalog(LabelConfig(sys.argv[1], sys.argv[2], model_dir=sys.argv[3], files_per_task=1, rows_per_file=1,
                              num_cpus=2))
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
"""


@pytest.mark.timeout(240)
def test_sigint_to_label_then_rerun_and_a_second_run_is_refused(ray_local, songs, tmp_path, sigint_handled):
    cat, model = songs
    out = str(tmp_path / "labels")
    proc = subprocess.Popen([sys.executable, "-c", _LABEL_DRIVER, str(cat), out, model], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        started = _wait_for(lambda: _parts(out), timeout=150, proc=proc)
        # a second run on the same OUTPUT while the first writes: refused, nothing touched
        with pytest.raises(JobError, match=rf"being written by mgr label \(pid {proc.pid} on "):
            label_catalog(LabelConfig(str(cat), out, model_dir=model))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert started, err[-2000:]
    assert proc.returncode == 130, err[-2000:]
    assert not os.path.exists(os.path.join(out, labelset.MARKER_NAME))
    assert not os.path.exists(os.path.join(out, LOCK_NAME))
    done = pq.read_table(out, columns=["uri"]).num_rows
    assert 0 < done < N_SONGS, "the interrupt came after the end: nothing to resume"

    lock = os.path.join(out, LOCK_NAME)
    with open(lock, "w") as fh:  # a run on another machine holds OUTPUT: refused
        json.dump({"host": "other-host", "pid": 1, "command": "mgr label", "started": "x"}, fh)
    with pytest.raises(JobError, match="other-host"):
        label_catalog(LabelConfig(str(cat), out, model_dir=model))
    with open(lock, "w") as fh:  # a killed run of this host (its pid is gone): taken over
        json.dump({"host": socket.gethostname(), "pid": proc.pid, "command": "mgr label", "started": "x"}, fh)
    s = label_catalog(LabelConfig(str(cat), out, model_dir=model), log=lambda _l: None)
    assert s["run"]["files_skipped_already_done"] == done and s["run"]["files"] == N_SONGS - done
    assert s["complete"] and not os.path.exists(lock)
    uris = pq.read_table(out, columns=["uri"]).column("uri").to_pylist()
    assert len(uris) == len(set(uris)) == N_SONGS


# ---------------------------------------------------------- a node lost on a real cluster

_CLUSTER_SCRIPT = r'''
import json, os, sys, threading, time
work, cat, model = sys.argv[1:4]
import pyarrow.parquet as pq
import ray
from ray.cluster_utils import Cluster
from mgr.pipelines.catalog_config import ExtractConfig, LabelConfig
from mgr.pipelines.extract import extract
from mgr.pipelines.label import label_catalog

# Cluster() writes its address to /tmp/ray/ray_current_cluster and never removes it: every
# later plain ray.init() on this machine (other tests, other sessions) would then try to join
# it. Keep this test cluster to this process.
ray._private.utils.write_ray_address = lambda *args, **kwargs: None
feat, labels = os.path.join(work, "features"), os.path.join(work, "labels")
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
# the driver joins while the head is the only node, so it is the head's raylet it attaches to
# (removing the node a driver is attached to would end the driver, not test the job)
ray.init(address=cluster.address, logging_level="WARNING")
workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
cluster.wait_for_nodes()
result = {}

def parts(path):
    try:
        return sorted(n for n in os.listdir(path) if n.startswith("part-"))
    except FileNotFoundError:
        return []

def in_thread(fn, **kw):
    box = {}
    def run():
        try:
            box["value"] = fn(**kw)
        except BaseException as exc:
            box["error"] = repr(exc)
    th = threading.Thread(target=run, daemon=True)
    th.start()
    running.append(th)
    return th, box

running = []

def th_alive():
    return bool(running) and running[-1].is_alive()

def remove_when_started(path, key, victim):
    t0 = time.time()
    while not parts(path) and time.time() - t0 < 200 and th_alive():
        time.sleep(0.02)
    result[key + "_parts_at_removal"] = len(parts(path))
    result[key + "_removal_after_s"] = round(time.time() - t0, 1)
    if not parts(path):
        return  # the job never got going (or already failed): nothing to interrupt
    cluster.remove_node(victim, allow_graceful=False)  # the node dies with its raylet and workers; no replacement

def finish(th, box, key):
    th.join(240)
    if th.is_alive() or "error" in box:
        print("RESULT " + json.dumps({**result, "failed": key, "error": box.get("error", "hung")[:4000]}), flush=True)
        cluster.shutdown()
        os._exit(3)
    return box["value"]

th, box = in_thread(extract, cfg=ExtractConfig(cat, feat))
remove_when_started(feat, "extract", workers[0])
s = finish(th, box, "extract")
uris = pq.read_table(feat, columns=["uri"]).column("uri").to_pylist()
result.update(extract_files=s["counts"]["files"], extract_errors=s["counts"]["errors"], extract_uris=uris,
              features_json=os.path.exists(os.path.join(feat, "_features.json")))

th, box = in_thread(label_catalog, cfg=LabelConfig(cat, labels, model_dir=model, files_per_task=1, rows_per_file=1),
                    log=lambda _l: None)
remove_when_started(labels, "label", workers[1])
s = finish(th, box, "label")
uris = pq.read_table(labels, columns=["uri"]).column("uri").to_pylist()
result.update(label_files=s["run"]["files"], label_errors=s["run"]["errors"], label_complete=s["complete"],
              label_uris=uris, success_json=os.path.exists(os.path.join(labels, "_SUCCESS.json")))
ray.shutdown()
cluster.shutdown()
print("RESULT " + json.dumps(result), flush=True)
'''


def test_planning_failures_name_their_cause():
    """A planning failure says why (it said "planning failed: None" when the cause was a
    planner lost with its node); an mgr error behind Ray's wrapper is raised as itself."""
    from ray.exceptions import ActorUnavailableError

    from mgr.errors import StorageError
    from mgr.pipelines.output import _raise_user_error, lost_node

    gone = ActorUnavailableError("The actor is temporarily unavailable: Connection refused", b"\0" * 16)
    assert lost_node(gone) and not lost_node(RuntimeError("disk full"))
    with pytest.raises(JobError, match="planning failed: The actor .* is unavailable"):
        _raise_user_error(gone)
    try:
        try:
            raise StorageError("s3://b/out: access denied")
        except StorageError as inner:
            raise RuntimeError("remote traceback ...") from inner
    except RuntimeError as wrapped:
        with pytest.raises(StorageError, match="access denied"):
            _raise_user_error(wrapped)


@pytest.mark.skipif(os.environ.get("MGR_NODE_LOSS_TEST") != "1",
                    reason="runs in its own pytest session (MGR_NODE_LOSS_TEST=1, the second step of make "
                    "test): three more Ray nodes beside the suite's own Ray starve each other on small machines")
@pytest.mark.timeout(600)
def test_worker_node_removed_mid_extraction_and_labeling(songs, tmp_path):
    """A 3-node Ray (three one-CPU nodes, the driver on the head) in a subprocess; once the
    first part file of each job exists a worker node is killed and none replaces it (after
    both jobs only the head is left): the jobs re-plan what OUTPUT lacks and finish on the
    nodes that remain; the outputs are complete, every file exactly once, no error rows."""
    cat, model = songs
    env = {**_env(), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _CLUSTER_SCRIPT, str(tmp_path), str(cat), model],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=580)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, (proc.returncode, proc.stderr[-3000:])
    r = json.loads(line[len("RESULT "):])
    assert "failed" not in r, (r, proc.stderr[-3000:])
    expected = sorted(str(cat / f"song{i:02d}.wav") for i in range(N_SONGS))
    for job in ("extract", "label"):
        assert 1 <= r[f"{job}_parts_at_removal"] < N_SONGS // 2, r  # the node died early in the run
        assert sorted(r[f"{job}_uris"]) == expected, job  # complete, no duplicate rows
        assert r[f"{job}_errors"] == 0
    assert r["extract_files"] == N_SONGS and r["features_json"]
    assert r["label_files"] == N_SONGS and r["label_complete"] and r["success_json"]


# --------------------------------------------------------------- a training worker killed

def _children(ppid: int, needle: str) -> list[int]:
    """Pids of the processes whose parent is ``ppid`` and whose command line holds ``needle``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as fh:
                parent = int(re.search(r"^PPid:\s+(\d+)", fh.read(), re.M).group(1))
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, AttributeError):
            continue
        if parent == ppid and needle in cmd:
            found.append(int(name))
    return found


def _registered_checkpoints(run_dir) -> int:
    try:
        with open(os.path.join(run_dir, "checkpoint_manager_snapshot.json")) as fh:
            return len(json.load(fh).get("checkpoint_results") or [])
    except (OSError, ValueError):
        return 0


@pytest.mark.timeout(300)
def test_training_worker_killed_resumes_from_last_checkpoint(ray_local, tmp_path, capfd):
    """SIGKILL of a Ray Train worker process of this session's Ray after the first
    checkpoint: Ray Train restarts the worker group from that checkpoint and the model
    still reaches high accuracy."""
    import ray

    from mgr.pipelines.train import train
    from mgr.pipelines.train_config import TrainJobConfig
    from tests.featgen import write_features

    feats = str(tmp_path / "feat")
    write_features(feats, n_genres=4)
    out = tmp_path / "model"
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    killed: list[int] = []

    def kill_after_first_checkpoint():
        runs = out / "ray_train"
        # a checkpoint on disk is only resumed from once Ray Train's controller registered it
        # (it collects the workers' reports every few seconds): wait for its snapshot to list one
        ok = _wait_for(lambda: _registered_checkpoints(runs) >= 1, timeout=200, step=0.05)
        pids = _children(raylet, "RayTrainWorker") if ok else []
        if pids:
            os.kill(pids[-1], signal.SIGKILL)
            killed.append(pids[-1])

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    summary = train(TrainJobConfig(feats, str(out), model="cnn", preset="mgr", workers=2, epochs=10, crop_seconds=1.0,
                                   batch_size=16, model_options={"channels": 32}, max_failures=2))
    killer.join(5)
    text = capfd.readouterr().out
    assert killed, "no Ray Train worker was found to kill"
    assert not os.path.exists(f"/proc/{killed[0]}/status") or "State:\tZ" in open(f"/proc/{killed[0]}/status").read()
    resumed = re.findall(r"resuming after epoch (\d+)", text)
    assert resumed and int(resumed[0]) >= 1, text[-3000:]  # from a checkpoint, not from scratch
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, 11))  # every epoch once
    assert summary["epochs_trained"] == 10 and summary["test_accuracy"] >= 0.9
