"""Typed, frozen configurations of the two catalog jobs (``mgr extract`` and ``mgr label``).

The CLI builds one from its arguments and passes it whole to :func:`mgr.pipelines.extract.extract`
or :func:`mgr.pipelines.label.label_catalog`; every option is checked once, in
``__post_init__``, and a bad one is a :class:`~mgr.errors.ConfigError` naming the option.
Locations are :class:`~mgr.io.location.Location` objects (a ``str`` is accepted and turned
into one with ``endpoint_url``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mgr.audio.decode import DEFAULT_MAX_SECONDS
from mgr.errors import ConfigError
from mgr.io.location import Location

__all__ = ["ExtractConfig", "LabelConfig", "parse_actors", "MANIFEST_PREFIX"]

#: a catalog given as ``manifest:FILE`` (CSV or Parquet with a ``uri`` column)
MANIFEST_PREFIX = "manifest:"


def parse_actors(text: str | tuple | list | None) -> tuple[int, int] | None:
    """``"2"`` → (2, 2); ``"1,4"`` → (1, 4); None → None (derived from the cluster)."""
    if text is None or text == "":
        return None
    try:
        parts = [int(p) for p in (str(text).split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        raise ConfigError(f"--actors takes MIN,MAX (e.g. 1,4), got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 1 <= parts[0] <= parts[1]:
        raise ConfigError(f"--actors takes MIN,MAX with 1 <= MIN <= MAX, got {text!r}")
    return parts[0], parts[1]


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)


def _at_least(value, minimum, option: str, *, kind=int):
    try:
        v = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{option} takes a number, got {value!r}") from None
    if v < minimum:
        raise ConfigError(f"{option} must be at least {minimum}, got {value!r}")
    return v


def _common(cfg) -> None:
    """Checks shared by both jobs: locations, --max-seconds, --num-cpus."""
    _set(cfg, "output", Location.of(cfg.output, endpoint_url=cfg.endpoint_url))
    if cfg.max_seconds is not None and not float(cfg.max_seconds) > 0:
        raise ConfigError(f"--max-seconds must be positive, got {cfg.max_seconds!r}")
    if cfg.num_cpus is not None:
        _set(cfg, "num_cpus", _at_least(cfg.num_cpus, 1, "--num-cpus"))


@dataclass(frozen=True)
class ExtractConfig:
    """What ``mgr extract INPUT OUTPUT`` does (see ``mgr extract --help``).

    ``split`` takes ``"0.7,0.2,0.1"`` or a 3-tuple; it is stored as a tuple of floats.
    """

    input: Location | str
    output: Location | str
    labels: str = "none"
    preset: str = "paper"
    seed: int = 0
    split: tuple[float, float, float] | str = (0.7, 0.2, 0.1)
    group_by: str | None = None
    subset: str | None = None
    official_split: bool = False
    max_seconds: float | None = DEFAULT_MAX_SECONDS
    overwrite: bool = False
    files_per_task: int = 32
    address: str | None = None
    num_cpus: int | None = None
    endpoint_url: str | None = None

    def __post_init__(self) -> None:
        from mgr.config import get_preset
        from mgr.datasets.sources import parse_labels_spec
        from mgr.datasets.sources.fma import SUBSETS
        from mgr.datasets.sources.split import parse_ratios

        _set(self, "input", Location.of(self.input, endpoint_url=self.endpoint_url))
        _common(self)
        get_preset(self.preset)  # ConfigError naming the preset
        _set(self, "split", parse_ratios(self.split))
        parse_labels_spec(self.labels)
        if self.group_by not in (None, "artist"):
            raise ConfigError(f"--group-by supports only 'artist' (got {self.group_by!r})")
        if self.subset is not None and self.subset not in SUBSETS:
            raise ConfigError(f"--subset: unknown FMA subset {self.subset!r}; choose one of {list(SUBSETS)}")
        _set(self, "seed", int(self.seed))
        _set(self, "files_per_task", _at_least(self.files_per_task, 1, "--files-per-task"))

    def replace(self, **changes) -> "ExtractConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class LabelConfig:
    """What ``mgr label CATALOG OUTPUT --model MODEL_DIR`` does (see ``mgr label --help``).

    ``catalog`` is a folder or ``s3://`` prefix, or ``"manifest:FILE"`` (then ``catalog``
    becomes FILE's Location and ``manifest`` is True). ``actors`` takes ``"MIN,MAX"``
    or a pair.
    """

    catalog: Location | str
    output: Location | str
    model_dir: Location | str
    window_seconds: float | None = None
    hop_seconds: float | None = None
    top_k: int = 3
    batch_size: int = 64
    actors: tuple[int, int] | str | None = None
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None
    per_step: bool = False
    max_windows: int | None = None
    min_confidence: float = 0.0
    retry_errors: bool = False
    overwrite: bool = False
    max_seconds: float | None = DEFAULT_MAX_SECONDS
    files_per_task: int = 4
    rows_per_file: int = 1000
    address: str | None = None
    num_cpus: int | None = None
    endpoint_url: str | None = None
    manifest: bool = field(default=False)

    def __post_init__(self) -> None:
        catalog = self.catalog
        if isinstance(catalog, str) and catalog.startswith(MANIFEST_PREFIX):
            path = catalog[len(MANIFEST_PREFIX):]
            if not path:
                from mgr.errors import LabelSourceError

                raise LabelSourceError("manifest: needs a file, e.g. manifest:s3://bucket/catalog.csv")
            catalog = path
            _set(self, "manifest", True)
        _set(self, "catalog", Location.of(catalog, endpoint_url=self.endpoint_url))
        _set(self, "model_dir", Location.of(self.model_dir, endpoint_url=self.endpoint_url))
        _common(self)
        _set(self, "actors", parse_actors(self.actors))
        _set(self, "top_k", _at_least(self.top_k, 1, "--top-k"))
        _set(self, "batch_size", _at_least(self.batch_size, 1, "--batch-size"))
        _set(self, "files_per_task", _at_least(self.files_per_task, 1, "--files-per-task"))
        _set(self, "rows_per_file", _at_least(self.rows_per_file, 1, "rows per file"))
        if self.max_windows is not None:
            _set(self, "max_windows", _at_least(self.max_windows, 1, "--max-windows"))
        conf = float(self.min_confidence)
        if not 0.0 <= conf <= 1.0:
            raise ConfigError(f"--min-confidence is a probability in [0, 1], got {self.min_confidence}")
        _set(self, "min_confidence", conf)
        _set(self, "gpus_per_actor", _at_least(self.gpus_per_actor, 0.0, "--gpus-per-actor", kind=float))
        if self.cpus_per_actor is not None:
            _set(self, "cpus_per_actor", _at_least(self.cpus_per_actor, 0.0, "--cpus-per-actor", kind=float))
        for option, value in (("--window-seconds", self.window_seconds), ("--hop-seconds", self.hop_seconds)):
            if value is not None and not float(value) > 0:
                raise ConfigError(f"{option} must be positive, got {value!r}")

    @property
    def catalog_text(self) -> str:
        """The catalog as the user wrote it (``manifest:FILE`` or the folder)."""
        return (MANIFEST_PREFIX if self.manifest else "") + self.catalog.uri

    def replace(self, **changes) -> "LabelConfig":
        return dataclasses.replace(self, **changes)
