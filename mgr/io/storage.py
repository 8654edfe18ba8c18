"""Function forms of :class:`~mgr.io.location.Location` for code that holds a uri string.

New code passes a :class:`Location`; these helpers build one per call.
"""

from __future__ import annotations

import os
import posixpath
from typing import Iterable, Iterator

from mgr.io.location import AUDIO_EXTENSIONS, LOCK_NAME, Location, is_remote, local_path

__all__ = [
    "AUDIO_EXTENSIONS",
    "LOCK_NAME",
    "Location",
    "filesystem",
    "is_remote",
    "join",
    "list_audio",
    "list_audio_sizes",
    "local_path",
    "output_lock",
    "read_bytes",
    "s3_options",
    "strip_protocol",
    "to_uri",
]


def strip_protocol(uri: str) -> str:
    return uri.split("://", 1)[1] if "://" in uri else uri


def s3_options(*, endpoint_url: str | None = None, retries: int | None = None) -> dict:
    """Keyword arguments for ``s3fs.S3FileSystem`` (see :meth:`Location.s3_options`)."""
    return Location("s3://_", endpoint_url=endpoint_url, retries=retries).s3_options()


def filesystem(uri: str, *, endpoint_url: str | None = None):
    """``(fs, path)`` for a local path or a remote URI."""
    loc = Location.of(uri, endpoint_url=endpoint_url)
    return loc.fs, loc.path


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or a URI."""
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def to_uri(fs, path: str, like: str) -> str:
    """Give ``path`` (as listed by ``fs``) the protocol of ``like``."""
    return Location(like).child_uri(path)


def list_audio_sizes(uri: str, *, endpoint_url: str | None = None,
                     extensions: Iterable[str] = AUDIO_EXTENSIONS) -> list[tuple[str, int]]:
    """See :meth:`Location.list_audio_sizes`."""
    return Location.of(uri, endpoint_url=endpoint_url).list_audio_sizes(extensions=extensions)


def list_audio(uri: str, *, endpoint_url: str | None = None, extensions: Iterable[str] = AUDIO_EXTENSIONS) -> list[str]:
    """The uris of :func:`list_audio_sizes`."""
    return [u for u, _ in list_audio_sizes(uri, endpoint_url=endpoint_url, extensions=extensions)]


def read_bytes(uri: str, *, endpoint_url: str | None = None) -> bytes:
    """Read a whole local file or remote object; errors become :class:`StorageError`."""
    return Location.of(uri, endpoint_url=endpoint_url).read_bytes()


def output_lock(output: str, *, command: str, endpoint_url: str | None = None) -> Iterator[dict]:
    """See :meth:`Location.lock`."""
    return Location.of(output, endpoint_url=endpoint_url).lock(command=command)
