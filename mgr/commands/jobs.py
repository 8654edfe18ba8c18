"""``mgr jobs list|status ID|logs ID [--follow]|stop ID --address URL``: track cluster jobs."""

from __future__ import annotations

import argparse

from mgr.errors import JobError

__all__ = ["register", "run"]


def register(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address", default=None, help="the head's dashboard URL, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)"
    )
    p = subparsers.add_parser(
        "jobs",
        help="list mgr's jobs on a Ray cluster; status, logs or stop one",
        description="Track the jobs `mgr submit` sent to a Ray cluster.",
    )
    sub = p.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", parents=[common], help="mgr's jobs: id, kind, status, start, end, output")
    ls.add_argument("--all", action="store_true", help="every job on the cluster, not only mgr's")
    st = sub.add_parser("status", parents=[common], help="status of one job (with the reason when it failed)")
    st.add_argument("submission_id", metavar="ID")
    lg = sub.add_parser("logs", parents=[common], help="a job's output")
    lg.add_argument("submission_id", metavar="ID")
    lg.add_argument("--follow", "-f", action="store_true", help="stream until the job ends; exit with its result")
    sp = sub.add_parser("stop", parents=[common], help="stop a running job")
    sp.add_argument("submission_id", metavar="ID")
    p.set_defaults(func=run)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def run(args: argparse.Namespace) -> int:
    from mgr.remote.jobs_client import JobsClient

    client = JobsClient(args.address)
    action = args.jobs_command
    if action == "list":
        jobs = client.list(all_jobs=args.all)
        if not jobs:
            print(f"no mgr jobs at {client.address}")
            return 0
        rows = [["SUBMISSION_ID", "KIND", "STATUS", "START", "END", "OUTPUT"]]
        rows += [[j.submission_id, j.kind or "-", j.status, j.start, j.end, j.output or "-"] for j in jobs]
        print(_table(rows))
        return 0
    sid = args.submission_id
    if action == "status":
        job = client.info(sid)
        print(f"submission_id: {job.submission_id}")
        print(f"status: {job.status}")
        for key in ("kind", "input", "output", "start", "end", "entrypoint"):
            print(f"{key}: {getattr(job, key) or '-'}")
        if job.status in ("FAILED", "STOPPED"):
            print(f"reason: {client.failure_reason(sid, job)}")
        return 0
    if action == "logs":
        if not args.follow:
            print(client.logs(sid), end="")
            return 0
        job = client.follow(sid)
        if job.status != "SUCCEEDED":
            raise JobError(f"job {sid} {job.status}: {client.failure_reason(sid, job)}")
        return 0
    if action == "stop":
        if client.stop(sid):
            print(f"stop requested for job {sid}")
        else:
            print(f"job {sid} had already ended ({client.info(sid).status})")
        return 0
    raise JobError(f"unknown jobs action {action!r}")  # pragma: no cover - argparse checks it
