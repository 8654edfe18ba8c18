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
]


class MgrError(Exception):
    """Base class of every error mgr raises on purpose."""


class ConfigError(MgrError, ValueError):
    """An option or configuration value is invalid."""


class StorageError(MgrError):
    """An input or output location cannot be listed, read or written."""


class AudioError(MgrError):
    """A file could not be decoded into usable audio; the message says why."""


class LabelSourceError(MgrError):
    """A label source (folder tree, FMA tracks.csv, manifest) cannot be used."""


class ModelError(MgrError):
    """A model directory is missing, malformed, or does not match the features."""


class JobError(MgrError):
    """A Ray job or cluster could not be reached, submitted, or it failed."""
