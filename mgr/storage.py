"""Locations: local paths and ``s3://bucket/prefix`` URIs through fsspec/s3fs.

The S3 endpoint comes from ``endpoint_url`` or ``AWS_ENDPOINT_URL``; credentials from the
usual AWS environment (never passed around or logged by mgr).
"""

from __future__ import annotations

import os
import posixpath
from typing import Iterable

import fsspec

from mgr.errors import StorageError

__all__ = [
    "AUDIO_EXTENSIONS",
    "is_remote",
    "filesystem",
    "join",
    "list_audio",
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


def list_audio(
    uri: str,
    *,
    endpoint_url: str | None = None,
    extensions: Iterable[str] = AUDIO_EXTENSIONS,
) -> list[str]:
    """List the audio files under ``uri`` (recursively), sorted.

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
    list of str
        Local absolute paths, or URIs with the input's protocol.

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
            found = [path]
        else:
            found = fs.find(path)
    except StorageError:
        raise
    except PermissionError as exc:
        raise StorageError(f"cannot list {uri}: permission denied ({exc})") from None
    except OSError as exc:
        raise StorageError(f"cannot list {uri}: {exc}") from None
    files = sorted(p for p in found if p.lower().endswith(exts))
    return [to_uri(fs, p, uri) for p in files]


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
