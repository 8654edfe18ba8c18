"""The model directory: ``model.pt`` (a state_dict) and ``model.json`` (everything else).

``model.json`` keys: ``name``, ``architecture`` ("cnn"|"crnn"), ``model_config`` (kwargs of
:func:`mgr.models.build_model`, incl. ``n_classes``/``n_mels``), ``feature_config``,
``genres`` (vocabulary in output order), ``window_frames`` (W), ``pad_value``,
``normalization`` (null or per-band ``{"mean": [n_mels], "std": [n_mels]}``), ``average``
(crnn), ``metrics``, ``provenance``, ``card``, ``created``, ``mgr_version``. No Ray here.

``card`` (the model card, see :func:`default_card`): ``data`` (what it was trained on),
``metrics`` (``measured``: the ``metrics`` of this file; ``published``: figures published
with the weights, when any), ``licence`` (``name``, ``url``) and ``provenance``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mgr.io.location import Location
from mgr.errors import ConfigError, ModelError

__all__ = ["MODEL_FILE", "SPEC_FILE", "LoadedModel", "save_model_dir", "load_model_dir", "write_bytes",
           "read_spec", "write_json", "now_iso", "default_card", "model_card"]

MODEL_FILE = "model.pt"
SPEC_FILE = "model.json"
REQUIRED = ("name", "architecture", "model_config", "feature_config", "genres", "window_frames", "pad_value")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def default_card(spec: dict) -> dict:
    """The model card of a ``model.json`` that carries none: what the spec itself says.

    ``metrics.measured`` is the spec's own ``metrics`` dict (the same object, so figures
    added to ``spec["metrics"]`` later, e.g. the test accuracy, are in the card too);
    the licence is unknown unless whoever made the model states it.
    """
    prov = spec.get("provenance") or {}
    data = {"genres": list(spec.get("genres") or [])}
    if prov.get("features"):
        data["features"] = prov["features"]
    return {
        "data": data,
        "metrics": {"measured": spec.setdefault("metrics", {}), "published": {}},
        "licence": {"name": "unspecified", "url": None},
        "provenance": prov,
    }


def model_card(spec: dict) -> dict:
    """The ``card`` of a ``model.json`` (:func:`default_card` for one written before cards)."""
    card = spec.get("card")
    return card if isinstance(card, dict) else default_card(dict(spec))


def write_bytes(where: Location | str, data: bytes, *, endpoint_url: str | None = None) -> None:
    """Write a file of a model directory (a Location, or a uri with its endpoint)."""
    Location.of(where, endpoint_url=endpoint_url).write_bytes(data)


def write_json(where: Location | str, obj: Any, *, endpoint_url: str | None = None) -> None:
    """Write ``obj`` as indented JSON to a local path or URI."""
    Location.of(where, endpoint_url=endpoint_url).write_json(obj)


def save_model_dir(out: Location | str, *, model, spec: dict, endpoint_url: str | None = None) -> None:
    """Write ``model.pt`` (the state_dict of ``model``, unwrapped from DDP) and ``model.json``.

    Parameters
    ----------
    out : Location or str
        Local folder or ``s3://`` prefix (a str takes ``endpoint_url``).
    model : torch.nn.Module
        The trained model (a DDP wrapper is unwrapped).
    spec : dict
        The ``model.json`` content; ``mgr_version`` and ``created`` are added, and ``card``
        (:func:`default_card`) is set in ``spec`` itself when it has none, so a later
        rewrite of the same dict keeps it.
    """
    import torch

    from mgr import __version__

    missing = [k for k in REQUIRED if k not in spec]
    if missing:
        raise ModelError(f"model spec lacks {missing}")
    module = getattr(model, "module", model)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buf)
    if not isinstance(spec.get("card"), dict):
        spec["card"] = default_card(spec)
    out = Location.of(out, endpoint_url=endpoint_url)
    out.join(MODEL_FILE).write_bytes(buf.getvalue())
    full = dict(spec)
    full["mgr_version"] = __version__
    full.setdefault("created", now_iso())
    out.join(SPEC_FILE).write_json(full)


def read_spec(where: Location | str, *, endpoint_url: str | None = None) -> dict:
    """Read and validate ``model.json`` of a model directory."""
    loc = Location.of(where, endpoint_url=endpoint_url)
    uri = loc.uri
    spec_loc = loc.join(SPEC_FILE)
    try:
        with spec_loc.fs.open(spec_loc.path, "rb") as fh:
            spec = json.loads(fh.read())
    except FileNotFoundError:
        raise ModelError(f"{uri} is not a model directory: it has no {SPEC_FILE} "
                         "(train one with `mgr train` or import one with `mgr import-keras`)") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {SPEC_FILE} in {uri}: {exc}") from None
    if not isinstance(spec, dict):
        raise ModelError(f"{SPEC_FILE} in {uri} is not a JSON object")
    missing = [k for k in REQUIRED if k not in spec]
    if missing:
        raise ModelError(f"{SPEC_FILE} in {uri} lacks {missing}")
    return spec


@dataclass
class LoadedModel:
    """A model directory loaded for inference.

    Attributes
    ----------
    model : torch.nn.Module
        In eval mode, on the requested device; log-probabilities out.
    spec : dict
        ``model.json``.
    model_id : str
        ``f"{name}-{sha256(model.pt)[:12]}"``.
    feature_config : FeatureConfig
    genres : list of str
    window_frames : int
        W, the input length in frames.
    pad_value : float
        Value of padded (raw, un-normalised) frames.
    temperature : float
        Calibration temperature T of the track distributions (model.json ``temperature``;
        1.0 when uncalibrated); part of ``model_id`` when not 1.
    """

    model: Any
    spec: dict
    model_id: str
    feature_config: Any
    genres: list
    window_frames: int
    pad_value: float
    mean: np.ndarray | None = field(default=None, repr=False)
    std: np.ndarray | None = field(default=None, repr=False)
    temperature: float = 1.0

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Per-band standardisation of ``[..., n_mels, T]`` → float32 (identity when none)."""
        x = np.asarray(x, dtype=np.float32)
        if self.mean is None:
            return x
        return (x - self.mean[:, None]) / self.std[:, None]


def load_model_dir(where: Location | str, *, device: str = "cpu", endpoint_url: str | None = None) -> LoadedModel:
    """Load a model directory (local or ``s3://``).

    Raises
    ------
    ModelError
        The folder is missing, incomplete, or its weights do not fit its ``model.json``.
    """
    import torch

    from mgr.config import FeatureConfig
    from mgr.models import build_model

    loc = Location.of(where, endpoint_url=endpoint_url)
    uri = loc.uri
    spec = read_spec(loc)
    weights = loc.join(MODEL_FILE)
    try:
        with weights.fs.open(weights.path, "rb") as fh:
            blob = fh.read()
    except FileNotFoundError:
        raise ModelError(f"{uri} has {SPEC_FILE} but no {MODEL_FILE}") from None
    except OSError as exc:
        raise ModelError(f"cannot read {MODEL_FILE} in {uri}: {exc}") from None
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ModelError(f"{MODEL_FILE} in {uri} is not a loadable state_dict: {exc}") from None
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    config = dict(spec["model_config"])
    arch = spec["architecture"]
    if int(config.get("n_classes", -1)) != len(spec["genres"]):
        raise ModelError(f"{SPEC_FILE} in {uri}: {len(spec['genres'])} genres but "
                         f"model_config.n_classes = {config.get('n_classes')}")
    try:
        model = build_model(arch, **config)
        if arch == "crnn" and spec.get("average"):
            model.average = spec["average"]
        model.load_state_dict(state, strict=True)
    except ConfigError as exc:
        raise ModelError(f"{SPEC_FILE} in {uri} describes an invalid model: {exc}") from None
    except RuntimeError as exc:
        raise ModelError(f"{MODEL_FILE} in {uri} does not match its {SPEC_FILE}: "
                         f"{str(exc).splitlines()[0]}") from None
    model.to(device).eval()
    try:
        fcfg = FeatureConfig.from_dict(spec["feature_config"])
    except ConfigError as exc:
        raise ModelError(f"{SPEC_FILE} in {uri}: {exc}") from None
    norm = spec.get("normalization")
    mean = std = None
    if norm:
        mean = np.asarray(norm["mean"], dtype=np.float32)
        std = np.maximum(np.asarray(norm["std"], dtype=np.float32), 1e-6)
        if mean.shape != (fcfg.n_mels,) or std.shape != (fcfg.n_mels,):
            raise ModelError(f"{SPEC_FILE} in {uri}: normalization must have {fcfg.n_mels} bands")
    try:
        temperature = float(spec.get("temperature", 1.0))
    except (TypeError, ValueError):
        temperature = float("nan")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ModelError(f"{SPEC_FILE} in {uri}: temperature must be a positive number, got {spec.get('temperature')!r}")
    model_id = f"{spec['name']}-{hashlib.sha256(blob).hexdigest()[:12]}"
    if temperature != 1.0:
        model_id += f"-t{temperature:.4g}"  # a calibrated model is another model (for resume)
    return LoadedModel(
        model=model,
        spec=spec,
        model_id=model_id,
        feature_config=fcfg,
        genres=list(spec["genres"]),
        window_frames=int(spec["window_frames"]),
        pad_value=float(spec["pad_value"]),
        mean=mean,
        std=std,
        temperature=temperature,
    )
