"""A quiet console: mgr's lines (steps, epochs, summary) and none of Ray's internals unless --verbose.

Each test runs mgr in a subprocess with its own embedded Ray (the suite's shared Ray
would bypass the console set-up of mgr.pipelines.runtime).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: what Ray's internals print when left alone (seen in `make demo` before mgr silenced them)
RAY_INTERNALS = (
    "(PlacementGroupCleaner",
    "Failed to query Ray Train Controller actor state",
    "Starting execution of Dataset",
    "Execution plan of Dataset",
    "execution finished in",
    "Running Dataset",
    "Progress bars disabled",
    "Progress will be logged",
    "Token authentication is enabled",
    "RayDeprecationWarning",
    "(DatasetManager",
    "(SplitCoordinator",
)


def _env(**extra) -> dict:
    env = dict(os.environ)
    for key in ("RAY_ADDRESS", "MGR_VERBOSE", "RAY_DATA_LOGGING_CONFIG", "RAY_DATA_DISABLE_PROGRESS_BARS"):
        env.pop(key, None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _run(args, *, env, timeout, cwd=ROOT) -> str:
    try:
        res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # show what it printed so far
        partial = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                          for x in (exc.stdout, exc.stderr))
        pytest.fail(f"{' '.join(args[:4])} ... ran over {timeout} s; its output so far:\n{partial[-4000:]}")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    return out


def _internals(out: str) -> list[str]:
    return [line for line in out.splitlines() if any(s in line for s in RAY_INTERNALS)]


_SCRIPT = textwrap.dedent("""
    import logging, sys, warnings
    import ray
    from mgr.pipelines.runtime import ray_session

    @ray.remote
    def work():
        print("mgr-line: from a worker's stdout", flush=True)
        logging.getLogger("ray.some.internal").warning("ray-internal: a worker's log line")
        warnings.warn("ray-internal: a worker's warning", DeprecationWarning)
        print("ray-internal: a worker's stderr", file=sys.stderr, flush=True)
        return 1

    with ray_session(num_cpus=1):
        import ray.data
        assert ray.get(work.remote()) == 1
        assert ray.data.range(10).map_batches(lambda b: b).count() == 10
        # the raylet's notices reach the driver through the GCS error channel
        from ray._private.utils import publish_error_to_driver
        gcs = ray._private.worker.global_worker.gcs_client
        publish_error_to_driver("worker_pool_large", "WARNING: 9 PYTHON worker processes have been started on "
                                "node: n with address: 127.0.0.1, which is 3x the maximum expected startup "
                                "concurrency (3).", gcs)
        publish_error_to_driver("mgr_test", "mgr-line: a raylet notice that stays", gcs)
        import time; time.sleep(2)  # the log monitor forwards lines about once a second
    print("mgr-line: done", flush=True)
""")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("verbose", [False, True])
def test_worker_stdout_reaches_the_console_and_ray_internals_only_with_verbose(verbose):
    env = _env(**({"MGR_VERBOSE": "1"} if verbose else {}))
    out = _run([sys.executable, "-c", _SCRIPT], env=env, timeout=240)
    assert "mgr-line: from a worker's stdout" in out and "mgr-line: done" in out
    assert "mgr-line: a raylet notice that stays" in out  # other raylet messages (OOM kills...) still print
    if verbose:
        assert "worker processes have been started" in out
        assert "ray-internal: a worker's stderr" in out
        assert "execution finished" in out or "Starting execution" in out  # Ray Data's banners are back
    else:
        assert "ray-internal" not in out, out
        assert "worker processes have been started" not in out, out
        assert not _internals(out), _internals(out)


@pytest.mark.timeout(900)
def test_the_quick_demo_end_to_end_and_its_console(tmp_path):
    """`mgr demo --size quick` as `make demo` runs it: every step's output is there and right,
    and the console holds mgr's lines and nothing of Ray's internal actors."""
    import json

    import pyarrow.parquet as pq
    import soundfile as sf

    from mgr.experiments.synth import clip

    music, weights, home = tmp_path / "music", tmp_path / "no-weights", tmp_path / "mgr-home"
    for d in (music, weights, home):
        d.mkdir()
    sf.write(music / "real.ogg", clip("jazz", 8.0, seed=5), 22050)
    out = _run([sys.executable, "-m", "mgr.cli", "demo", "--workdir", str(tmp_path / "demo"), "--size", "quick",
                "--music", str(music), "--weights", str(weights)],
               env=_env(MGR_HOME=str(home)), timeout=840)
    bad = _internals(out)
    assert not bad, "Ray's internals on the console:\n" + "\n".join(bad[:20])
    # mgr's own lines are all there: steps, the epoch lines of both trainings, the summary
    for step in range(1, 7):
        assert f"[{step}/6]" in out, step
    epochs = re.findall(r"epoch (\d+)/(\d+)", out)
    assert len(epochs) >= 4, out[-3000:]  # 2 epochs × cnn and crnn
    assert "mgr demo — summary" in out
    logs = re.search(r"Ray's own logs of this run: (\S+)", out)
    assert logs and os.path.isdir(logs.group(1)), out[-2000:]
    # and what left the console is in the session folder
    err_files = [f for f in os.listdir(logs.group(1)) if f.endswith(".err")]
    assert err_files
    # the demo's models and labels come with their reports
    demo = tmp_path / "demo"
    for arch in ("cnn", "crnn"):
        assert (demo / "models" / arch / "report.html").is_file(), arch
        assert (demo / "models" / arch / "calibration.png").is_file(), arch
    assert (demo / "labels" / "_report" / "index.html").is_file()
    assert (demo / "labels" / "_report" / "review.csv").is_file()
    # the pipeline's results: both models evaluated, every catalog file labelled once, figures
    summary = json.loads((demo / "summary.json").read_text())
    assert summary["evaluate"].keys() == {"cnn", "crnn"}
    for s in summary["evaluate"].values():
        assert 0.0 <= s["accuracy"] <= 1.0 and s["n"] > 0
    assert "accuracy_weighted" in summary["evaluate"]["crnn"]
    labels = pq.read_table(demo / "labels")
    catalog = sorted(os.listdir(demo / "catalog"))
    assert sorted(os.path.basename(u) for u in labels.column("uri").to_pylist()) == catalog
    assert summary["label_music"]["files"] == 1
    for png in [summary["timeline_png"], *summary["confusion_pngs"].values()]:
        with open(png, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
