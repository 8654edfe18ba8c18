"""One error hierarchy for mgr.

Every error a user can cause (a missing input, a bad option, a file that is not audio)
is an :class:`MgrError` subclass whose message says what to do; the CLI prints it as one
line and exits non-zero, never with a traceback.
"""

__all__ = [
    "MgrError",
    "ConfigError",
    "StorageError",
    "AudioError",
    "LabelSourceError",
    "ModelError",
    "JobError",
    "user_error",
    "worker_cause",
]


class MgrError(Exception):
    """Base class of every error mgr raises on purpose."""


class ConfigError(MgrError, ValueError):
    """An option or configuration value is invalid."""


class StorageError(MgrError):
    """An input or output location cannot be listed, read or written.

    ``retryable`` is True when trying again may succeed (a network error, throttling that
    outlasted the retries, a timeout), False when it will not (missing, access denied).
    """

    def __init__(self, message: str = "", *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable

    def __reduce__(self):  # keep ``retryable`` when Ray pickles the error across processes
        return (_storage_error, (str(self), self.retryable))


def _storage_error(message: str, retryable: bool) -> "StorageError":
    return StorageError(message, retryable=retryable)


class AudioError(MgrError):
    """A file could not be decoded into usable audio; the message says why."""


class LabelSourceError(MgrError):
    """A label source (folder tree, FMA tracks.csv, manifest) cannot be used."""


class ModelError(MgrError):
    """A model directory is missing, malformed, or does not match the features."""


class JobError(MgrError):
    """A Ray job or cluster could not be reached, submitted, or it failed."""


def _chain(exc: BaseException | None):
    """``exc`` and the exceptions behind it: Ray's ``cause`` (a task error's original), then
    ``__cause__`` / ``__context__``; each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        inner = getattr(exc, "cause", None)
        exc = inner if isinstance(inner, BaseException) else (exc.__cause__ or exc.__context__)


def user_error(exc: BaseException | None) -> MgrError | None:
    """The :class:`MgrError` behind ``exc`` (Ray wraps task errors in its own), or None.

    Ray's wrapper of a worker's error is an instance of the error's class too, but its text
    is a remote traceback: the error itself (the one without a ``cause``) is preferred.
    """
    errors = [e for e in _chain(exc) if isinstance(e, MgrError)]
    real = [e for e in errors if not isinstance(getattr(e, "cause", None), BaseException)]
    return (real or errors or [None])[0]


def worker_cause(exc: BaseException) -> str:
    """One line saying why a Ray job failed: the message of the MgrError a worker raised
    (Ray wraps it in a task error whose text is a remote traceback), else the first line."""
    for e in _chain(exc):
        if isinstance(e, MgrError) and not isinstance(getattr(e, "cause", None), BaseException):
            return str(e).strip().splitlines()[0]
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
