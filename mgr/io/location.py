"""Where data lives: one object for a local path or an ``s3://bucket/prefix`` URI.

A :class:`Location` carries everything needed to reach a place (its filesystem, path, S3
endpoint and retry settings), so the rest of mgr passes one object around instead of
``(uri, endpoint_url)`` pairs. Reading and writing bytes, listing, joining and locking
live on it; errors become :class:`~mgr.errors.StorageError` with ``retryable`` set.

The S3 endpoint comes from ``endpoint_url`` or ``AWS_ENDPOINT_URL``; credentials from the
usual AWS environment (never held, passed around or logged by mgr).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
from typing import Any, Iterable, Iterator

from mgr.errors import StorageError

__all__ = ["AUDIO_EXTENSIONS", "LOCK_NAME", "Location", "is_remote"]

AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".au", ".snd", ".aif", ".aiff", ".aifc", ".m4a")

#: the lock file of an OUTPUT being written (``_``: ignored by pyarrow and pandas readers)
LOCK_NAME = "_LOCK.json"


def is_remote(uri: str) -> bool:
    """True for URIs with a protocol other than ``file``."""
    return "://" in uri and not uri.startswith("file://")


def _storage_error(what: str, uri: str, exc: BaseException) -> StorageError:
    if isinstance(exc, FileNotFoundError):
        return StorageError(f"{uri} not found", retryable=False)
    if isinstance(exc, PermissionError):
        return StorageError(f"cannot {what} {uri}: permission denied ({exc})", retryable=False)
    return StorageError(f"cannot {what} {uri}: {exc}", retryable=True)


class Location:
    """A local path or remote URI with the settings to reach it.

    Parameters
    ----------
    uri : str
        A local path (``~`` expanded; ``file://`` accepted) or ``s3://bucket/prefix``.
    endpoint_url : str, optional
        S3-compatible endpoint; default ``$AWS_ENDPOINT_URL``.
    retries : int, optional
        botocore's attempts per S3 request (adaptive mode: backoff and client-side rate
        limiting) on throttling and transient errors; default ``$MGR_S3_RETRIES`` or 10.

    Notes
    -----
    Picklable (Ray ships it to workers): the filesystem object is not pickled but made
    again on first use in the worker.
    """

    __slots__ = ("uri", "endpoint_url", "retries", "_fs")

    def __init__(self, uri: str, *, endpoint_url: str | None = None, retries: int | None = None):
        if isinstance(uri, Location):  # pragma: no cover - guarded by Location.of
            raise TypeError("use Location.of() to accept a Location")
        uri = os.fspath(uri)
        if not is_remote(uri):
            path = uri[len("file://"):] if uri.startswith("file://") else uri
            uri = os.path.abspath(os.path.expanduser(path)) if path else path
        self.uri = uri
        self.endpoint_url = endpoint_url or None
        self.retries = retries
        self._fs = None

    @classmethod
    def of(cls, where: "Location | str", *, endpoint_url: str | None = None) -> "Location":
        """``where`` itself when it is a Location, else a new one with ``endpoint_url``."""
        if isinstance(where, Location):
            return where
        return cls(where, endpoint_url=endpoint_url)

    # --- identity -------------------------------------------------------------------
    def __reduce__(self):
        return (_make_location, (self.uri, self.endpoint_url, self.retries))

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and (self.uri, self.endpoint_url) == (other.uri, other.endpoint_url)

    def __hash__(self) -> int:
        return hash((self.uri, self.endpoint_url))

    @property
    def is_remote(self) -> bool:
        return is_remote(self.uri)

    @property
    def protocol(self) -> str:
        return self.uri.split("://", 1)[0] if self.is_remote else "file"

    @property
    def path(self) -> str:
        """The path as the filesystem knows it (no protocol)."""
        return self.uri.split("://", 1)[1] if self.is_remote else self.uri

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def join(self, *parts: str) -> "Location":
        """The location ``parts`` below this one (same endpoint and retries)."""
        if self.is_remote:
            uri = posixpath.join(self.uri.rstrip("/"), *parts)
        else:
            uri = os.path.join(self.uri, *parts)
        return Location(uri, endpoint_url=self.endpoint_url, retries=self.retries)

    def child_uri(self, path: str) -> str:
        """The uri of ``path`` as listed by :attr:`fs` (the protocol of this location).

        Local names that are not valid UTF-8 (bytes the OS allows but Arrow strings cannot
        hold) are percent-encoded; :func:`local_path` maps them back.
        """
        if self.is_remote:
            return self.protocol + "://" + path
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            from urllib.parse import quote_from_bytes

            return quote_from_bytes(os.fsencode(path), safe="/ ._-+,=()[]{}~@!$&'")
        return path

    # --- filesystems ----------------------------------------------------------------
    def s3_options(self) -> dict:
        """Keyword arguments for ``s3fs.S3FileSystem`` (endpoint, adaptive retries)."""
        retries = self.retries if self.retries is not None else int(os.environ.get("MGR_S3_RETRIES", "10"))
        opts: dict = {
            "config_kwargs": {"retries": {"max_attempts": retries, "mode": "adaptive"}},
            "skip_instance_cache": False,
        }
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        if endpoint:
            opts["endpoint_url"] = endpoint
        return opts

    @property
    def fs(self):
        """The fsspec filesystem (made on first use; s3fs for ``s3://``)."""
        if self._fs is None:
            import fsspec

            try:
                if not self.is_remote:
                    self._fs = fsspec.filesystem("file")
                elif self.protocol in ("s3", "s3a"):
                    self._fs = fsspec.filesystem("s3", **self.s3_options())
                else:
                    self._fs = fsspec.filesystem(self.protocol)
            except (ImportError, ValueError) as exc:
                raise StorageError(f"cannot open {self.uri}: {exc}") from None
        return self._fs

    def arrow_filesystem(self):
        """``(pyarrow filesystem, path)`` for pyarrow and Ray Data readers and writers.

        Remote locations go through the same s3fs client (same endpoint and botocore retry
        settings) wrapped for pyarrow, so Ray Data retries exactly as mgr's own reads do.
        """
        import pyarrow.fs as pafs

        if not self.is_remote:
            return pafs.LocalFileSystem(), self.path
        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs)), self.path

    # --- reading and writing --------------------------------------------------------
    def exists(self) -> bool:
        try:
            return bool(self.fs.exists(self.path))
        except OSError as exc:
            raise _storage_error("reach", self.uri, exc) from None

    def isdir(self) -> bool:
        try:
            return bool(self.fs.isdir(self.path))
        except OSError as exc:
            raise _storage_error("reach", self.uri, exc) from None

    def read_bytes(self) -> bytes:
        """The whole file or object; errors become :class:`StorageError`."""
        try:
            with self.fs.open(self.path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise _storage_error("read", self.uri, exc) from None

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file or object (parent folders made locally).

        Local files are written to a temporary name and renamed, so a reader never sees
        half a file; S3 PUTs are atomic already.
        """
        try:
            if self.is_remote:
                self.fs.pipe_file(self.path, data)
                return
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            tmp = f"{self.path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise _storage_error("write", self.uri, exc) from None

    def read_json(self) -> Any:
        try:
            return json.loads(self.read_bytes())
        except ValueError as exc:
            raise StorageError(f"{self.uri} is not valid JSON: {exc}", retryable=False) from None

    def write_json(self, obj: Any) -> None:
        self.write_bytes(json.dumps(obj, indent=2, sort_keys=True).encode())

    def rm(self, *, recursive: bool = False, missing_ok: bool = True) -> None:
        try:
            self.fs.rm(self.path, recursive=recursive)
        except FileNotFoundError:
            if not missing_ok:
                raise StorageError(f"{self.uri} not found", retryable=False) from None
        except OSError as exc:
            raise _storage_error("delete", self.uri, exc) from None

    def files(self, *, detail: bool = False):
        """Every file below this location (recursively): paths, or ``{path: info}``."""
        try:
            if not self.fs.exists(self.path):
                return {} if detail else []
            if self.fs.isfile(self.path):
                return {self.path: self.fs.info(self.path)} if detail else [self.path]
            return self.fs.find(self.path, detail=detail)
        except OSError as exc:
            raise _storage_error("list", self.uri, exc) from None

    def list_audio_sizes(self, *, extensions: Iterable[str] = AUDIO_EXTENSIONS) -> list[tuple[str, int]]:
        """The audio files below this location (recursively) with their sizes, sorted.

        Returns
        -------
        list of (str, int)
            Local absolute paths, or URIs with this location's protocol, and sizes in bytes
            (the listing has them for free; they serve to balance work).

        Raises
        ------
        StorageError
            The location does not exist or cannot be listed.
        """
        if not self.exists():
            raise StorageError(f"input {self.uri} does not exist", retryable=False)
        found = self.files(detail=True)
        exts = tuple(e.lower() for e in extensions)
        names = sorted(p for p in found if p.lower().endswith(exts))
        return [(self.child_uri(p), int(found[p].get("size") or 0)) for p in names]

    # --- locking --------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, *, command: str) -> Iterator[dict]:
        """Hold ``_LOCK.json`` in this folder while a job writes it; refuse if another holds it.

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
        import socket
        import uuid

        from mgr.errors import JobError

        fs, base = self.fs, self.path
        path = base.rstrip("/") + "/" + LOCK_NAME
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "command": command, "token": uuid.uuid4().hex,
                 "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        data = json.dumps(owner, indent=2).encode()
        created_dir = False
        for attempt in range(2):
            try:
                if self.is_remote:
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
                who = (f"{held.get('command', 'another run')} (pid {held.get('pid', '?')} on "
                       f"{held.get('host', '?')}, since {held.get('started', '?')})")
                raise JobError(f"{self.uri} is being written by {who}; wait for it to finish, or delete "
                               f"{self.join(LOCK_NAME).uri} if that run is gone") from None
            except OSError as exc:
                raise StorageError(f"cannot lock OUTPUT {self.uri}: {exc}", retryable=True) from None
        else:
            raise JobError(f"cannot lock OUTPUT {self.uri}: the lock file keeps changing hands")
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


def _make_location(uri: str, endpoint_url: str | None, retries: int | None) -> Location:
    return Location(uri, endpoint_url=endpoint_url, retries=retries)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def local_path(uri: str) -> str:
    """The file behind a local uri (``file://`` stripped, percent-encoded names decoded)."""
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    if "%" in path and not os.path.exists(path):
        from urllib.parse import unquote_to_bytes

        decoded = os.fsdecode(unquote_to_bytes(path))
        if os.path.exists(decoded):
            return decoded
    return path
