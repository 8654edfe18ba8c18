"""Security: safe model loading, no credentials anywhere mgr writes, loopback-only local
clusters, output paths that crafted input names cannot steer."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid

import pyarrow.parquet as pq
import pytest

from mgr.datasets import labelset
from mgr.pipelines.catalog_config import LabelConfig
from mgr.pipelines.label import label_catalog
from tests.audiogen import music_like, write_audio
from tests.faults import model_dir, snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _py_files(*dirs):
    for d in dirs:
        for dirpath, _, files in os.walk(os.path.join(ROOT, d)):
            yield from (os.path.join(dirpath, f) for f in files if f.endswith(".py"))


def test_model_files_are_loaded_with_weights_only():
    """Every torch.load in mgr/ and jobs/ passes weights_only=True; nothing unpickles."""
    loads = []
    for path in _py_files("mgr", "jobs"):
        tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            where = f"{os.path.relpath(path, ROOT)}:{node.lineno}"
            if owner == "torch" and name == "load":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                assert ok, f"{where}: torch.load without weights_only=True"
                loads.append(where)
            assert not (owner in ("pickle", "cloudpickle", "dill", "joblib") and name in ("load", "loads")), where
            assert not (owner == "np" and name == "load" and not any(
                k.arg == "allow_pickle" and getattr(k.value, "value", None) is False for k in node.keywords)), where
    assert loads, "no torch.load found: the check looks at the wrong tree"


def test_local_cluster_scripts_bind_to_loopback():
    text = open(os.path.join(ROOT, "cluster", "start-local.sh"), encoding="utf-8").read()
    starts = [m.group(0) for m in re.finditer(r'"\$RAY" start(?:[^\n]*\\\n)*[^\n]*', text)]
    assert len(starts) == 2, starts  # the head and the workers
    head = next(s for s in starts if "--head" in s)
    assert "--dashboard-host=127.0.0.1" in head
    for s in starts:
        assert "--node-ip-address=127.0.0.1" in s, s
    assert "0.0.0.0" not in text
    from mgr.pipelines import runtime

    src = open(runtime.__file__, encoding="utf-8").read()
    assert "include_dashboard=False" in src  # the embedded Ray opens no dashboard at all


def test_worker_and_job_environments_hold_no_secrets(monkeypatch):
    from mgr.remote.runtime_env import build_runtime_env
    from mgr.pipelines.runtime import worker_env

    secrets = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-" + uuid.uuid4().hex, "AWS_SESSION_TOKEN": "tok-" + uuid.uuid4().hex,
               "RAY_AUTH_TOKEN": "ray-" + uuid.uuid4().hex, "HF_TOKEN": "hf-" + uuid.uuid4().hex}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MGR_S3_RETRIES", "4")
    for env in (worker_env(endpoint_url="http://127.0.0.1:9"), build_runtime_env(pip=False)["env_vars"]):
        text = repr(env)
        assert not any(v in text for v in secrets.values()), text
        assert env["MGR_S3_RETRIES"] == "4"


@pytest.mark.timeout(300)
def test_no_credentials_in_logs_or_outputs(s3_bucket, s3_endpoint, tmp_path):
    """extract + label on S3 in real `mgr` processes with unique credentials: the secret
    appears in no captured output, no Ray log and no file or object mgr wrote."""
    fs, bucket = s3_bucket
    for i, style in enumerate(("drone", "chime", "techno")):
        p = write_audio(str(tmp_path / "src" / f"t{i}.ogg"), music_like(style, 3.0, seed=i))
        fs.put(p, f"{bucket}/cat/t{i}.ogg")
    fs.pipe(f"{bucket}/cat/broken.mp3", b"no audio here " * 30)
    secret, token = "SECRET-" + uuid.uuid4().hex, "SESSION-" + uuid.uuid4().hex
    ray_tmp = tempfile.mkdtemp(prefix="mgr-sec-", dir="/tmp")  # short: Ray's socket paths live in it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(PYTHONPATH=ROOT, AWS_SECRET_ACCESS_KEY=secret, AWS_SESSION_TOKEN=token, RAY_TMPDIR=ray_tmp,
               RAY_USAGE_STATS_ENABLED="0", AWS_ENDPOINT_URL=s3_endpoint)
    model = model_dir(tmp_path / "model")
    labels = str(tmp_path / "labels")
    try:
        runs = [
            [sys.executable, "-m", "mgr.cli", "extract", f"s3://{bucket}/cat", f"s3://{bucket}/feat", "--num-cpus", "2"],
            [sys.executable, "-m", "mgr.cli", "label", f"s3://{bucket}/cat", labels, "--model", model,
             "--num-cpus", "2", "--json"],
            # and a failure: its message must not carry them either
            [sys.executable, "-m", "mgr.cli", "label", f"s3://{bucket}/nothing-here", str(tmp_path / "l2"),
             "--model", model],
        ]
        captured = []
        for i, cmd in enumerate(runs):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=200)
            assert proc.returncode == (2 if i == 2 else 0), proc.stderr[-3000:]
            captured += [proc.stdout, proc.stderr]
        assert "labeled" not in captured[3] and '"complete": true' in captured[2]
        blobs = {f"captured output {i}": text.encode() for i, text in enumerate(captured)}
        for root in (ray_tmp, str(tmp_path)):
            for path in snapshot(root):
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as fh:
                        blobs[path] = fh.read()
        fs.invalidate_cache()
        objects = [p for p in fs.find(bucket) if not p.startswith(f"{bucket}/cat/")]
        assert any(p.endswith("_features.json") for p in objects) and len(objects) >= 2
        for p in objects:
            blobs["s3://" + p] = fs.cat_file(p)
        assert sum(1 for k in blobs if k.startswith(ray_tmp)) > 10, "no Ray logs were found to scan"
        leaks = [k for k, data in blobs.items() if secret.encode() in data or token.encode() in data]
        assert not leaks, f"credentials found in: {leaks[:5]}"
        assert pq.read_table(labels).num_rows == 4
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.timeout(240)
def test_crafted_s3_keys_cannot_steer_local_output(ray_local, s3_bucket, s3_endpoint, tmp_path):
    """S3 keys holding '..' segments or encoded slashes, labeled into a local OUTPUT: every
    key gets one row, and every file written lies inside OUTPUT under a digest name."""
    fs, bucket = s3_bucket
    src = write_audio(str(tmp_path / "x.wav"), music_like("drone", 2.0))
    keys = ["cat/a/../../../../evil.wav", "cat/..%2F..%2F..%2Fevil.wav", "cat/" + "d" * 200 + "/../x.wav",
            "cat/ok.wav"]
    for k in keys:
        fs.put(src, f"{bucket}/{k}")
    model = model_dir(tmp_path / "model")
    work = tmp_path / "work"
    work.mkdir()
    before = snapshot(tmp_path)
    out = str(work / "labels")
    s = label_catalog(LabelConfig(f"s3://{bucket}/cat", out, model_dir=model, endpoint_url=s3_endpoint), log=lambda _l: None)
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["uri"] for r in rows) == sorted(f"s3://{bucket}/{k}" for k in keys) and s["complete"]
    new = snapshot(tmp_path) - before
    assert new and all(p.startswith(out + "/") for p in new), sorted(new)
    names = {os.path.basename(p) for p in new if not p.startswith(out + "/_report/")}  # issue 16's report
    assert all(re.fullmatch(r"part-[0-9a-f]{20}\.parquet", n) or n == labelset.MARKER_NAME for n in names), names
