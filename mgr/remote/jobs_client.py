"""Ray Jobs submission and tracking for mgr's jobs (``mgr submit``, ``mgr jobs``).

A thin layer over :class:`ray.job_submission.JobSubmissionClient` that

- reaches the head's dashboard (``http://HEAD:8265``, or ``$RAY_ADDRESS``) and, when the
  head asks for token authentication (Ray 2.60 turns it on for new local clusters), sends
  the token Ray's own loader finds (``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or
  ``~/.ray/auth_token``) as ``ray job submit`` does with ``RAY_AUTH_MODE=token``; the
  token is only ever put in a request header, never printed, logged or stored;
- sends the runtime_env of :mod:`mgr.remote.runtime_env` (the project as working_dir,
  the worker environment, never credentials);
- tags every job with metadata ``mgr_kind``, ``mgr_input``, ``mgr_output``,
  ``mgr_version`` so ``mgr jobs list`` can show mgr's jobs among others;
- turns every failure (unreachable head, unknown id, failed job) into a one-line
  :class:`~mgr.errors.JobError`.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable

from mgr import __version__
from mgr.errors import JobError
from mgr.remote.runtime_env import build_runtime_env, entrypoint

__all__ = ["TERMINAL", "JobsClient", "JobSummary", "resolve_address"]

#: job states after which nothing changes any more
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

_CONNECT_TIMEOUT_S = 10.0


def resolve_address(address: str | None) -> str:
    """The dashboard URL to submit to: ``address``, else ``$RAY_ADDRESS``.

    Raises
    ------
    JobError
        When neither is given, or the address is a Ray Client (``ray://``) one.
    """
    address = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    if not address or address == "auto":
        raise JobError(
            "no Ray cluster given: pass --address http://HEAD:8265 (the head's dashboard) or set RAY_ADDRESS"
        )
    if address.startswith("ray://"):
        raise JobError(f"{address} is a Ray Client address; jobs are submitted to the dashboard, e.g. http://HEAD:8265")
    if "://" not in address:
        address = "http://" + address
    return address.rstrip("/")


@dataclass(frozen=True)
class JobSummary:
    """What ``mgr jobs`` shows of one job."""

    submission_id: str
    status: str
    kind: str
    input: str
    output: str
    start: str
    end: str
    message: str
    entrypoint: str

    @classmethod
    def from_details(cls, job) -> "JobSummary":
        meta = job.metadata or {}
        return cls(
            submission_id=job.submission_id or job.job_id or "?",
            status=str(getattr(job.status, "value", job.status)),
            kind=meta.get("mgr_kind", ""),
            input=meta.get("mgr_input", ""),
            output=meta.get("mgr_output", ""),
            start=_clock(job.start_time),
            end=_clock(job.end_time),
            message=(job.message or "").strip(),
            entrypoint=job.entrypoint or "",
        )


def _clock(ms: int | None) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000.0))


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return str(text).strip() or "unknown error"


class JobsClient:
    """mgr's view of one Ray cluster's Jobs API.

    Parameters
    ----------
    address : str, optional
        The head's dashboard URL (``http://HEAD:8265``); default ``$RAY_ADDRESS``.

    Raises
    ------
    JobError
        When the head cannot be reached, or asks for a token that cannot be found.
    """

    def __init__(self, address: str | None = None):
        self.address = resolve_address(address)
        headers = self._auth_headers()
        from ray.job_submission import JobSubmissionClient

        try:
            self._client = JobSubmissionClient(self.address, headers=headers or None)
        except Exception as exc:  # noqa: BLE001 - connection, version or auth failure
            raise JobError(f"cannot use the Ray Jobs API at {self.address}: {_first_line(exc)}") from None

    def _auth_headers(self) -> dict:
        """The Authorization header when the head requires a token, else ``{}``."""
        import requests

        try:
            r = requests.get(f"{self.address}/api/authentication_mode", timeout=_CONNECT_TIMEOUT_S)
        except requests.RequestException as exc:
            if isinstance(exc, requests.Timeout):
                reason = f"no answer within {_CONNECT_TIMEOUT_S:.0f} s"
            elif isinstance(exc, requests.ConnectionError):
                reason = "connection refused or host unreachable"
            else:
                reason = _first_line(exc)
            raise JobError(
                f"cannot reach the Ray head at {self.address} ({reason}); is the cluster up and is this its "
                "dashboard address (default port 8265)?"
            ) from None
        mode = "disabled"
        if r.status_code == 200:
            try:
                mode = str(r.json().get("authentication_mode", "disabled"))
            except ValueError:
                mode = "disabled"
        if mode != "token":
            return {}
        from ray._raylet import AuthenticationTokenLoader

        loader = AuthenticationTokenLoader.instance()
        headers = dict(loader.get_token_for_http_header(ignore_auth_mode=True) or {})
        if not headers:
            raise JobError(
                f"the Ray head at {self.address} requires an authentication token: set RAY_AUTH_TOKEN, or "
                "RAY_AUTH_TOKEN_PATH, or copy it to ~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
            )
        return headers

    # ----------------------------------------------------------------- submit
    def submit(
        self,
        kind: str,
        args: list[str],
        *,
        input: str,
        output: str,
        pip: bool = True,
        endpoint_url: str | None = None,
        submission_id: str | None = None,
    ) -> str:
        """Submit ``python jobs/<kind>.py <args>``; returns the submission id."""
        runtime_env = build_runtime_env(pip=pip, endpoint_url=endpoint_url)
        metadata = {"mgr_kind": kind, "mgr_input": str(input), "mgr_output": str(output), "mgr_version": __version__}
        try:
            return self._client.submit_job(
                entrypoint=entrypoint(kind, args),
                runtime_env=runtime_env,
                metadata=metadata,
                submission_id=submission_id,
            )
        except JobError:
            raise
        except Exception as exc:  # noqa: BLE001 - the server's refusal, one line
            raise JobError(f"submitting the {kind} job to {self.address} failed: {_reason(exc)}") from None

    # ------------------------------------------------------------------ query
    def list(self, *, all_jobs: bool = False) -> list[JobSummary]:
        """mgr's jobs on the cluster (every job with ``all_jobs``), oldest first."""
        try:
            jobs = self._client.list_jobs()
        except Exception as exc:  # noqa: BLE001
            raise JobError(f"listing jobs at {self.address} failed: {_reason(exc)}") from None
        jobs = [j for j in jobs if all_jobs or (j.metadata or {}).get("mgr_kind")]
        jobs.sort(key=lambda j: j.start_time or 0)
        return [JobSummary.from_details(j) for j in jobs]

    def info(self, submission_id: str) -> JobSummary:
        """One job's summary; an unknown id raises :class:`JobError`."""
        try:
            return JobSummary.from_details(self._client.get_job_info(submission_id))
        except Exception as exc:  # noqa: BLE001
            raise self._job_error(submission_id, exc) from None

    def details(self, submission_id: str):
        """Ray's ``JobDetails`` of one job (metadata, runtime_env, entrypoint)."""
        try:
            return self._client.get_job_info(submission_id)
        except Exception as exc:  # noqa: BLE001
            raise self._job_error(submission_id, exc) from None

    def logs(self, submission_id: str) -> str:
        """The job's driver output so far."""
        try:
            return self._client.get_job_logs(submission_id)
        except Exception as exc:  # noqa: BLE001
            raise self._job_error(submission_id, exc) from None

    def follow(self, submission_id: str, *, write: Callable[[str], object] | None = None) -> JobSummary:
        """Stream the job's output to ``write`` (stdout) until it ends; returns its summary."""
        write = write or _write_stdout
        self.info(submission_id)  # unknown id → one-line error before streaming

        async def _tail() -> None:
            async for chunk in self._client.tail_job_logs(submission_id):
                write(chunk)

        import logging

        logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)
        try:
            asyncio.run(_tail())
        except Exception:  # noqa: BLE001 - the stream dropped: fall back to polling
            pass
        deadline = time.monotonic() + 30.0
        summary = self.info(submission_id)
        while summary.status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(1.0)
            summary = self.info(submission_id)
        if summary.status not in TERMINAL:
            return self._poll(submission_id, write)
        return summary

    def _poll(self, submission_id: str, write: Callable[[str], object]) -> JobSummary:
        shown = 0
        while True:
            text = self.logs(submission_id)
            write(text[shown:])
            shown = len(text)
            summary = self.info(submission_id)
            if summary.status in TERMINAL:
                write(self.logs(submission_id)[shown:])
                return summary
            time.sleep(2.0)

    def stop(self, submission_id: str) -> bool:
        """Ask the cluster to stop the job; False when it had already ended."""
        self.info(submission_id)
        try:
            return bool(self._client.stop_job(submission_id))
        except Exception as exc:  # noqa: BLE001
            raise self._job_error(submission_id, exc) from None

    def failure_reason(self, submission_id: str, summary: JobSummary | None = None) -> str:
        """One line saying why a job ended without success."""
        summary = summary or self.info(submission_id)
        try:
            text = self.logs(submission_id)
        except JobError:
            text = ""
        return failure_line(summary, text)

    def _job_error(self, submission_id: str, exc: BaseException) -> JobError:
        text = str(exc)
        if "404" in text or "does not exist" in text:
            return JobError(f"no job {submission_id!r} at {self.address} (see `mgr jobs list --address {self.address}`)")
        return JobError(f"job {submission_id!r} at {self.address}: {_reason(exc)}")


def failure_line(summary: JobSummary, logs: str = "") -> str:
    """The most telling single line about a failed or stopped job.

    mgr's own one-line error (``mgr <cmd>: error: ...``) wins, then the last Python
    exception line of the logs, then Ray's message.
    """
    lines = [ln.strip() for ln in (logs or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^mgr [\w-]+: error: ", ln):
            return ln
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*", ln):
            return ln
    if summary.message:
        return _first_line(summary.message)
    return f"the job ended {summary.status}"


def _reason(exc: BaseException) -> str:
    text = _first_line(exc)
    m = re.match(r"Request failed with status code (\d+): (.*)", text)
    if m:
        return f"HTTP {m.group(1)}: {m.group(2).rstrip('.')}"
    return text


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
