"""The cluster definitions in ``cluster/``: they load, validate, name entrypoints and options
that exist, agree with the Ray version pinned in pyproject.toml; the local cluster scripts
start a head and a worker on loopback and stop exactly what they started.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
IMAGE_ROOT = "/home/ray/mgr"  # where cluster/Dockerfile puts the project


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _walk(node, key: str):
    """Every value stored under ``key`` anywhere in a loaded YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v, key)


def _ray_pin() -> tuple[str, str]:
    """(lower, upper) bounds of the ray requirement in pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"ray\[[^\]]*\]>=([\d.]+),<([\d.]+)"', text)
    assert m, "pyproject.toml pins ray as ray[...]>=X,<Y"
    return m.group(1), m.group(2)


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def _ray_version() -> str:
    """The Ray version the cluster files pin: the installed one, which must meet the pin."""
    import ray

    low, high = _ray_pin()
    assert _version_tuple(low) <= _version_tuple(ray.__version__) < _version_tuple(high)
    return ray.__version__


def _images() -> dict[str, list[str]]:
    out = {"aws.yaml": [_docs(CLUSTER / "aws.yaml")[0]["docker"]["image"]]}
    for path in sorted(KUBERAY.glob("*.yaml")):
        out[path.name] = [img for doc in _docs(path) for img in _walk(doc, "image")]
    out["Dockerfile"] = re.findall(r"^FROM\s+(\S+)", (CLUSTER / "Dockerfile").read_text(), re.M)
    return out


def _rayjobs() -> dict[str, dict]:
    jobs = {}
    for path in sorted(KUBERAY.glob("rayjob-*.yaml")):
        (doc,) = _docs(path)
        assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob", path
        jobs[path.stem.removeprefix("rayjob-")] = doc
    return jobs


def _gpu_groups(doc: dict) -> list[dict]:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    groups = []
    for group in spec.get("workerGroupSpecs", []):
        for c in group["template"]["spec"]["containers"]:
            if str(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", "0")) not in ("0", ""):
                groups.append(group)
    return groups


# ------------------------------------------------------------------ static
def test_every_manifest_loads():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert {p.name for p in files} >= {
        "aws.yaml", "raycluster.yaml", "rayjob-extract.yaml", "rayjob-train.yaml", "rayjob-label.yaml"
    }
    for path in files:
        docs = _docs(path)
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_aws_launcher_config_validates_against_rays_schema():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import validate_config

    config = _docs(CLUSTER / "aws.yaml")[0]
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(config)

    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # the head runs drivers, not tasks
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    families = {t["node_config"]["InstanceType"].split(".")[0] for t in workers.values()}
    assert {"g5", "p4d"} <= families and any(f.startswith(("c", "m")) for f in families)
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in workers.values())
    assert all(t.get("min_workers", 0) == 0 for t in workers.values())  # autoscaled from zero
    for name, t in types.items():
        assert t["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    text = (CLUSTER / "aws.yaml").read_text()
    assert not re.search(r"aws_access_key|aws_secret|AKIA[0-9A-Z]{8}", text, re.I)
    assert f"{IMAGE_ROOT}" in config["file_mounts"]


def test_images_and_ray_versions_agree_with_the_pin():
    version = _ray_version()
    images = _images()
    for name, tags in images.items():
        assert tags, f"{name} names no image"
        for tag in tags:
            assert re.fullmatch(rf"(rayproject/ray:{re.escape(version)}|\S*mgr:ray{re.escape(version)})-py311-gpu", tag), (
                name, tag
            )
    assert images["Dockerfile"] == [f"rayproject/ray:{version}-py311-gpu"]
    assert images["aws.yaml"] == [f"rayproject/ray:{version}-py311-gpu"]
    for path in KUBERAY.glob("*.yaml"):
        versions = [v for doc in _docs(path) for v in _walk(doc, "rayVersion")]
        assert versions and set(versions) == {version}, path
    assert f"ray.__version__ == '{version}'" in (CLUSTER / "Dockerfile").read_text()


def test_rayjob_entrypoints_exist_and_parse_with_mgrs_cli():
    from mgr.commands import build_parser

    jobs = _rayjobs()
    assert set(jobs) == {"extract", "train", "label"}
    for kind, doc in jobs.items():
        argv = shlex.split(doc["spec"]["entrypoint"])
        assert argv[:2] == ["python", f"{IMAGE_ROOT}/jobs/{kind}.py"], argv
        script = ROOT / "jobs" / f"{kind}.py"
        assert script.exists(), script
        assert f'main(["{kind}", *sys.argv[1:]])' in script.read_text()
        parser = build_parser(kind)
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        if kind not in sub.choices:
            pytest.skip(f"`mgr {kind}` is not built in this checkout yet")
        ns = parser.parse_args([kind, *argv[2:]])
        assert ns.command == kind
        meta = doc["spec"]["metadata"]
        assert meta["mgr_kind"] == kind and meta["mgr_input"] == argv[2] and meta["mgr_output"] == argv[3]
        env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
        assert not any(re.search("SECRET|ACCESS_KEY|TOKEN", k) for k in env.get("env_vars", {}))


def test_gpu_worker_groups_for_training():
    (cluster,) = [d for d in _docs(KUBERAY / "raycluster.yaml") if d["kind"] == "RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert _gpu_groups(cluster), "the RayCluster needs a worker group with nvidia.com/gpu"
    train = _rayjobs()["train"]
    assert _gpu_groups(train) and "--gpu" in shlex.split(train["spec"]["entrypoint"])
    for kind in ("extract", "label"):
        assert not _gpu_groups(_rayjobs()[kind])
    for path in KUBERAY.glob("*.yaml"):  # S3 access through the service account, never keys
        assert not re.search(r"AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID", path.read_text()), path


def test_dockerfile_context_installs(tmp_path):
    """The files the Dockerfile copies make an installable project (pip, offline, no deps)."""
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^WORKDIR {IMAGE_ROOT}$", text, re.M)
    copied = [src for line in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)$", text, re.M) for src in line.split()[:-1]]
    assert {"mgr", "jobs", "pyproject.toml"} <= set(copied)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for src in copied:
        path = ROOT / src
        if path.is_dir():
            shutil.copytree(path, ctx / src, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, ctx / src)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index", "--no-build-isolation",
         "--quiet", "--report", str(tmp_path / "report.json"), str(ctx)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert [i["metadata"]["name"] for i in report["install"]] == ["mgr"]
    assert all((ctx / "jobs" / f"{k}.py").exists() for k in ("extract", "train", "label"))


def test_local_scripts_never_use_a_global_ray_stop():
    for name in ("start-local.sh", "stop-local.sh"):
        path = CLUSTER / name
        assert os.access(path, os.X_OK), path
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
        code = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
        assert not any(re.search(r"\bray\"?\s+stop\b|pkill|killall", ln) for ln in code), name


# ------------------------------------------------------------------- live
def _group_members(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                out.append(int(entry.name))
    return out


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_local_cluster_scripts_start_and_stop_exactly_their_processes(tmp_path):
    from tests.conftest import free_port

    state = Path("/tmp") / f"mgrlc-{os.getpid()}"  # short: Ray's socket paths live under it
    token = tmp_path / "token"
    token.write_text("local-cluster-test-token")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env.update(
        MGR_CLUSTER_DIR=str(state), RAY_PORT=str(free_port()), DASHBOARD_PORT=str(free_port()),
        RAY=str(Path(sys.executable).parent / "ray"), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="5",
    )
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        start = subprocess.run([str(CLUSTER / "start-local.sh"), "1"], env=env, capture_output=True, text=True, timeout=200)
        pids = [line.split() for line in (state / "pids").read_text().splitlines()] if (state / "pids").exists() else []
        assert start.returncode == 0, start.stderr[-2000:] + start.stdout[-1000:]
        assert [name for _, name in pids] == ["head", "worker-1"]
        assert "local-cluster-test-token" not in start.stdout + start.stderr
        url = f"http://127.0.0.1:{env['DASHBOARD_PORT']}"
        assert url in start.stdout
        import requests

        assert requests.get(f"{url}/api/version", timeout=10).status_code == 401  # token auth is on
        ok = requests.get(f"{url}/api/version", headers={"Authorization": "Bearer local-cluster-test-token"}, timeout=10)
        assert ok.status_code == 200 and ok.json()["ray_version"] == _ray_version()
        groups = {int(pid): _group_members(int(pid)) for pid, _ in pids}
        assert all(len(members) >= 3 for members in groups.values()), groups  # ray start + gcs/raylet/agents
    finally:
        stop = subprocess.run([str(CLUSTER / "stop-local.sh")], env=env, capture_output=True, text=True, timeout=200)
    assert stop.returncode == 0, stop.stderr
    assert "stopped head" in stop.stdout and "stopped worker-1" in stop.stdout
    deadline = time.monotonic() + 20
    while any(_group_members(pgid) for pgid in groups) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_group_members(pgid) for pgid in groups)
    assert bystander.poll() is None  # nothing outside what the scripts started was touched
    bystander.kill()
    bystander.wait()
    shutil.rmtree(state, ignore_errors=True)
