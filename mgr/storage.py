"""Locations: local paths and ``s3://bucket/prefix`` URIs through fsspec/s3fs.

The S3 endpoint comes from ``endpoint_url`` or ``AWS_ENDPOINT_URL``; credentials from the
usual AWS environment (never passed around or logged by mgr).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from typing import Iterable, Iterator

import fsspec

from mgr.errors import StorageError

__all__ = [
    "AUDIO_EXTENSIONS",
    "is_remote",
    "filesystem",
    "LOCK_NAME",
    "output_lock",
    "join",
    "list_audio",
    "list_audio_sizes",
    "read_bytes",
    "strip_protocol",
]

AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".au", ".snd", ".aif", ".aiff", ".aifc", ".m4a")


def is_remote(uri: str) -> bool:
    """True for URIs with a protocol other than ``file``."""
    return "://" in uri and not uri.startswith("file://")


def strip_protocol(uri: str) -> str:
    return uri.split("://", 1)[1] if "://" in uri else uri


def s3_options(*, endpoint_url: str | None = None, retries: int | None = None) -> dict:
    """Keyword arguments for ``s3fs.S3FileSystem``.

    Parameters
    ----------
    endpoint_url : str, optional
        S3-compatible endpoint; defaults to ``AWS_ENDPOINT_URL``.
    retries : int, optional
        botocore's retry attempts (adaptive mode: backoff and client-side rate limiting) for
        throttling (503 SlowDown) and transient errors; default ``$MGR_S3_RETRIES`` or 10.
    """
    if retries is None:
        retries = int(os.environ.get("MGR_S3_RETRIES", "10"))
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    opts: dict = {
        "config_kwargs": {"retries": {"max_attempts": retries, "mode": "adaptive"}},
        "skip_instance_cache": False,
    }
    if endpoint:
        opts["endpoint_url"] = endpoint
    return opts


def filesystem(uri: str, *, endpoint_url: str | None = None):
    """Return ``(fs, path)`` for a local path or a remote URI.

    Raises
    ------
    StorageError
        The protocol is unknown or its filesystem cannot be created.
    """
    if not is_remote(uri):
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))
    protocol = uri.split("://", 1)[0]
    try:
        if protocol in ("s3", "s3a"):
            fs = fsspec.filesystem("s3", **s3_options(endpoint_url=endpoint_url))
        else:
            fs = fsspec.filesystem(protocol)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open {uri}: {exc}") from None
    return fs, strip_protocol(uri)


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or a URI."""
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def to_uri(fs, path: str, like: str) -> str:
    """Give ``path`` (as listed by ``fs``) the protocol of ``like``.

    Local names that are not valid UTF-8 (bytes the OS allows but Arrow strings cannot
    hold) are percent-encoded; :func:`local_path` maps them back.
    """
    if is_remote(like):
        return like.split("://", 1)[0] + "://" + path
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        from urllib.parse import quote_from_bytes

        return quote_from_bytes(os.fsencode(path), safe="/ ._-+,=()[]{}~@!$&'")
    return path


def local_path(uri: str) -> str:
    """The file behind a local uri (``file://`` stripped, percent-encoded names decoded)."""
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    if "%" in path and not os.path.exists(path):
        from urllib.parse import unquote_to_bytes

        decoded = os.fsdecode(unquote_to_bytes(path))
        if os.path.exists(decoded):
            return decoded
    return path


def list_audio_sizes(
    uri: str,
    *,
    endpoint_url: str | None = None,
    extensions: Iterable[str] = AUDIO_EXTENSIONS,
) -> list[tuple[str, int]]:
    """List the audio files under ``uri`` (recursively) with their sizes in bytes, sorted.

    Parameters
    ----------
    uri : str
        A local folder or file, or an ``s3://bucket/prefix``.
    endpoint_url : str, optional
        S3 endpoint.
    extensions : iterable of str
        Lower-case extensions with the dot; matching ignores case.

    Returns
    -------
    list of (str, int)
        Local absolute paths, or URIs with the input's protocol, and sizes (the listing
        has them for free; they serve to balance work).

    Raises
    ------
    StorageError
        ``uri`` does not exist or cannot be listed.
    """
    fs, path = filesystem(uri, endpoint_url=endpoint_url)
    exts = tuple(e.lower() for e in extensions)
    try:
        if not fs.exists(path):
            raise StorageError(f"input {uri} does not exist")
        if fs.isfile(path):
            found = {path: fs.info(path)}
        else:
            found = fs.find(path, detail=True)
    except StorageError:
        raise
    except PermissionError as exc:
        raise StorageError(f"cannot list {uri}: permission denied ({exc})") from None
    except OSError as exc:
        raise StorageError(f"cannot list {uri}: {exc}") from None
    files = sorted(p for p in found if p.lower().endswith(exts))
    return [(to_uri(fs, p, uri), int(found[p].get("size") or 0)) for p in files]


def list_audio(uri: str, *, endpoint_url: str | None = None, extensions: Iterable[str] = AUDIO_EXTENSIONS) -> list[str]:
    """The uris of :func:`list_audio_sizes`."""
    return [u for u, _ in list_audio_sizes(uri, endpoint_url=endpoint_url, extensions=extensions)]


def read_bytes(uri: str, *, endpoint_url: str | None = None) -> bytes:
    """Read a whole local file or remote object; errors become :class:`StorageError`."""
    fs, path = filesystem(uri, endpoint_url=endpoint_url)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise StorageError(f"{uri} not found") from None
    except PermissionError as exc:
        raise StorageError(f"cannot read {uri}: permission denied ({exc})") from None
    except OSError as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from None


#: the lock file of an OUTPUT being written (``_``: ignored by pyarrow and pandas readers)
LOCK_NAME = "_LOCK.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def output_lock(output: str, *, command: str, endpoint_url: str | None = None) -> Iterator[dict]:
    """Hold ``OUTPUT/_LOCK.json`` while a job writes ``output``; refuse if another holds it.

    The lock is created exclusively (``O_EXCL`` locally, a conditional ``If-None-Match``
    PUT on S3) and holds the owner's host, pid, command and start time. A lock left by a
    dead process of this host is taken over; any other is refused.

    Raises
    ------
    JobError
        Another run holds the lock.
    StorageError
        The lock cannot be written.
    """
    import datetime
    import json
    import socket
    import uuid

    from mgr.errors import JobError

    fs, base = filesystem(output, endpoint_url=endpoint_url)
    path = base.rstrip("/") + "/" + LOCK_NAME
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "command": command, "token": uuid.uuid4().hex,
             "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    data = json.dumps(owner, indent=2).encode()
    created_dir = False
    for attempt in range(2):
        try:
            if is_remote(output):
                fs.pipe_file(path, data, mode="create")
            else:
                if not os.path.isdir(base):
                    os.makedirs(base, exist_ok=True)
                    created_dir = True
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
            break
        except FileExistsError:
            try:
                held = json.loads(fs.cat_file(path))
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except (OSError, ValueError):
                held = {}
            stale = held.get("host") == owner["host"] and isinstance(held.get("pid"), int) \
                and not _pid_alive(held["pid"])
            if stale and attempt == 0:
                fs.rm(path)
                continue
            who = (f"{held.get('command', 'another run')} (pid {held.get('pid', '?')} on {held.get('host', '?')}, "
                   f"since {held.get('started', '?')})")
            raise JobError(f"{output} is being written by {who}; wait for it to finish, or delete "
                           f"{join(output, LOCK_NAME)} if that run is gone") from None
        except OSError as exc:
            raise StorageError(f"cannot lock OUTPUT {output}: {exc}") from None
    else:
        raise JobError(f"cannot lock OUTPUT {output}: the lock file keeps changing hands")
    try:
        yield owner
    finally:
        try:
            held = json.loads(fs.cat_file(path))
            if held.get("token") == owner["token"]:
                fs.rm(path)
            if created_dir:
                os.rmdir(base)  # only succeeds when the run wrote nothing
        except (OSError, ValueError):
            pass
