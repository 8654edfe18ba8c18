"""Import the paper's Model 2 from a Keras 2 HDF5 file into an mgr model directory.

Pure h5py + numpy + torch: no TensorFlow, no Keras, no Ray. Two Keras 2 layouts are read:

- a whole-model file (``model.save``): root attribute ``model_config`` (JSON) and the
  weights under ``model_weights/<layer>/<layer>/kernel:0``;
- a weights-only file (``model.save_weights``): the layer groups at the root. Its
  architecture comes from ``--config`` or a file Keras wrote beside it
  (``<stem>.keras.yaml``, ``<stem>.yaml``, ``<stem>.json``); without one, the architecture is
  inferred from Keras's automatic layer names and the weight shapes (strides, pooling and
  activations are then assumed, and a warning says so).

The architecture must be the published Model 2: ``Conv1D(256, 4, strides=2, valid) → ReLU →
MaxPooling1D(2)`` three times, ``GlobalAveragePooling1D ∥ GlobalMaxPooling1D`` (concatenated),
``Dropout``, ``Dense(n)``, softmax. Anything else raises :class:`~mgr.errors.ModelError`
naming the layer that differs.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
from dataclasses import dataclass, field

import numpy as np

from mgr.io.location import Location
from mgr.errors import ConfigError, ModelError, StorageError
from mgr.interop.keras.graph import (FILTERS, KERNEL, PAPER_MODEL2, graph_from_config, infer_graph,
                             parse_architecture, recognize)

__all__ = ["GTZAN_GENRES", "PAPER_MODEL2", "KerasModel2", "read_keras_h5", "to_state_dict",
           "parse_genres", "import_keras"]

GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop",
                "jazz", "metal", "pop", "reggae", "rock")
_SIDECARS = (".keras.yaml", ".yaml", ".yml", ".keras.json", ".json")


@dataclass
class KerasModel2:
    """Model 2's weights in Keras layout, as recognised in a Keras file.

    Attributes
    ----------
    conv_kernels : list of np.ndarray
        Three ``[kernel, in, out]`` float32 arrays (Keras layout).
    conv_biases : list of np.ndarray
        Three ``[out]`` arrays.
    dense_kernel : np.ndarray
        ``[512, n_classes]``; rows are ordered [GAP, GMP] whatever the file's order.
    dense_bias : np.ndarray
        ``[n_classes]``.
    n_mels, n_classes : int
    input_frames : int or None
        Time length of the Keras input layer (None when variable or unknown).
    keras_version, backend, architecture_from : str
    warnings : list of str
    """

    conv_kernels: list
    conv_biases: list
    dense_kernel: np.ndarray
    dense_bias: np.ndarray
    n_mels: int
    n_classes: int
    input_frames: int | None = None
    keras_version: str = "unknown"
    backend: str = "unknown"
    architecture_from: str = ""
    warnings: list = field(default_factory=list)


def _text(value) -> str:
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    return value.decode("utf8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _names(value) -> list[str]:
    return [_text(v) for v in np.atleast_1d(np.asarray(value)).tolist()] if value is not None else []


def _read_weights(group) -> tuple[list[str], dict]:
    """``layer_names`` and ``{layer: {"kernel": array, "bias": array}}`` of a Keras 2 weights group."""
    if "layer_names" not in group.attrs:
        raise ModelError("no Keras 2 'layer_names' in the file: not a Keras 2 HDF5 model or weights file "
                         "(Keras 3 files are not supported; save with Keras 2 as .h5)")
    layer_names = _names(group.attrs["layer_names"])
    weights: dict = {}
    for name in layer_names:
        if name not in group:
            raise ModelError(f"the file lists layer {name!r} but holds no group for it")
        g = group[name]
        wnames = _names(g.attrs.get("weight_names")) if "weight_names" in g.attrs else []
        entry = {}
        for i, wname in enumerate(wnames):
            role = wname.split("/")[-1].split(":")[0].lower()
            role = role if role in ("kernel", "bias") else ("kernel", "bias", f"w{i}")[min(i, 2)]
            if wname not in g:
                raise ModelError(f"layer {name!r} lists weights {wname!r} that the file does not hold")
            entry[role] = np.asarray(g[wname], dtype=np.float32)
        weights[name] = entry
    return layer_names, weights


def _architecture(f, uri: str, *, config_text: str | None, config_origin: str,
                  endpoint_url: str | None) -> tuple[dict | None, str]:
    """The Keras architecture: ``--config``, the file's ``model_config``, or a sidecar file."""
    if config_text is not None:
        return parse_architecture(config_text, origin=config_origin), config_origin
    if "model_config" in f.attrs:
        return parse_architecture(_text(f.attrs["model_config"]), origin="the file's model_config"), \
            "the file's model_config"
    stem = re.sub(r"\.(h5|hdf5|keras\.h5|weights\.h5)$", "", uri, flags=re.I)
    for suffix in _SIDECARS:
        cand = stem + suffix
        try:
            where = Location.of(cand, endpoint_url=endpoint_url)
            if not where.fs.isfile(where.path):
                continue
            text = where.read_bytes().decode("utf8", errors="replace")
        except (OSError, StorageError):
            continue
        name = posixpath.basename(cand)
        return parse_architecture(text, origin=name), name
    return None, ""


def read_keras_h5(data: bytes, *, origin: str = "the file", config_text: str | None = None,
                  config_origin: str = "--config", uri: str = "", endpoint_url: str | None = None) -> KerasModel2:
    """Read and recognise Model 2 in the bytes of a Keras 2 HDF5 file.

    Parameters
    ----------
    data : bytes
        The ``.h5`` file.
    origin : str
        Name used in messages.
    config_text : str, optional
        Keras architecture (JSON or YAML) overriding the file's own.
    uri : str
        Where the file lives, to look for an architecture file beside a weights-only file.

    Raises
    ------
    ModelError
        Not HDF5, not Keras 2, or not Model 2 (the message names what differs).
    """
    import h5py

    if data[:2] == b"PK":
        raise ModelError(f"{origin} is a zip archive (a Keras 3 .keras file?), not a Keras 2 HDF5 file; "
                         "save the model with Keras 2 as .h5")
    try:
        f = h5py.File(io.BytesIO(data), "r")
    except OSError:
        raise ModelError(f"{origin} is not an HDF5 file (expected a Keras 2 .h5 model or weights file)") from None
    try:
        with f:
            return _from_open_file(f, origin=origin, config_text=config_text, config_origin=config_origin,
                                   uri=uri, endpoint_url=endpoint_url)
    except (OSError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # damaged/odd file
        raise ModelError(f"cannot read {origin} as a Keras 2 file: {str(exc).splitlines()[0]}") from None


def _from_open_file(f, *, origin, config_text, config_origin, uri, endpoint_url) -> KerasModel2:
    """Model 2 in an open Keras 2 file (see :func:`read_keras_h5`)."""
    arch, arch_from = _architecture(f, uri, config_text=config_text, config_origin=config_origin,
                                    endpoint_url=endpoint_url)
    group = f["model_weights"] if "model_weights" in f else f
    layer_names, weights = _read_weights(group)
    attrs = dict(group.attrs) | dict(f.attrs)
    version, backend = _text(attrs.get("keras_version", "unknown")), _text(attrs.get("backend", "unknown"))
    warnings = []
    if arch is None:
        graph, output = infer_graph(layer_names, weights), layer_names[-1] if layer_names else ""
        arch_from = "layer names and weight shapes (weights-only file)"
        warnings.append(f"{origin} holds weights only and no architecture file was found beside it; "
                        "assumed the paper's strides, pooling and activations from the layer names "
                        "(pass --config with the architecture Keras wrote to check them)")
    else:
        graph, output = graph_from_config(arch, origin=origin)
    if not version.startswith("2") and version != "unknown":
        raise ModelError(f"{origin} was written by Keras {version}; only Keras 2 files can be imported")
    convs, dense, gap_first, inp = recognize(graph, output, origin=origin)
    return _collect(weights, convs, dense, gap_first, inp, origin=origin, version=version,
                    backend=backend, arch_from=arch_from, warnings=warnings)


def _collect(weights, convs, dense, gap_first, inp, *, origin, version, backend, arch_from, warnings) -> KerasModel2:
    def get(layer: dict, role: str, shape: tuple) -> np.ndarray:
        arr = weights.get(layer["name"], {}).get(role)
        if arr is None:
            raise ModelError(f"{origin}: no {role} weights for layer {layer['name']!r}")
        if any(want is not None and want != got for want, got in zip(shape, arr.shape)) or arr.ndim != len(shape):
            raise ModelError(f"{origin}: {layer['name']!r} {role} has shape {arr.shape}, expected "
                             "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")")
        return arr

    k0 = get(convs[0], "kernel", (KERNEL, None, FILTERS))
    n_mels = int(k0.shape[1])
    shape = inp["config"].get("batch_input_shape") or inp["config"].get("batch_shape") or [None, None, n_mels]
    if len(shape) != 3 or shape[2] not in (None, n_mels):
        raise ModelError(f"{origin}: input shape {shape} does not match {n_mels} mel bands × time")
    kernels = [k0] + [get(c, "kernel", (KERNEL, FILTERS, FILTERS)) for c in convs[1:]]
    biases = [get(c, "bias", (FILTERS,)) for c in convs]
    dk = get(dense, "kernel", (2 * FILTERS, None))
    db = get(dense, "bias", (dk.shape[1],))
    if not gap_first:  # file concatenates [GMP, GAP]; mgr's order is [GAP, GMP]
        dk = np.concatenate([dk[FILTERS:], dk[:FILTERS]], axis=0)
    return KerasModel2(conv_kernels=kernels, conv_biases=biases, dense_kernel=dk, dense_bias=db,
                       n_mels=n_mels, n_classes=int(dk.shape[1]),
                       input_frames=int(shape[1]) if shape[1] is not None else None,
                       keras_version=version, backend=backend, architecture_from=arch_from, warnings=warnings)


def to_state_dict(km: KerasModel2) -> dict:
    """Keras arrays → state_dict of ``build_model("cnn", preset="paper")`` (float32 tensors).

    Conv kernels ``[k, in, out]`` become ``[out, in, k]``; the dense kernel ``[in, out]``
    becomes ``[out, in]``.
    """
    import torch

    state = {}
    for i, (k, b) in enumerate(zip(km.conv_kernels, km.conv_biases)):
        state[f"convs.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(k.transpose(2, 1, 0)))
        state[f"convs.{i}.bias"] = torch.from_numpy(np.ascontiguousarray(b))
    state["dense.weight"] = torch.from_numpy(np.ascontiguousarray(km.dense_kernel.T))
    state["dense.bias"] = torch.from_numpy(np.ascontiguousarray(km.dense_bias))
    return state


def parse_genres(text: str | None, *, n_classes: int) -> list[str]:
    """The vocabulary: ``g1,g2,...`` or GTZAN's order for 10 classes; its size must be ``n_classes``."""
    if text is None:
        if n_classes == len(GTZAN_GENRES):
            return list(GTZAN_GENRES)
        raise ConfigError(f"the model has {n_classes} classes; give their genres in output order "
                          f"with --genres g1,g2,... ({n_classes} names)")
    genres = [g.strip() for g in text.split(",")]
    if any(not g for g in genres) or len(set(genres)) != len(genres):
        raise ConfigError(f"--genres must be distinct, non-empty names separated by commas, got {text!r}")
    if len(genres) != n_classes:
        raise ConfigError(f"--genres names {len(genres)} genres but the model has {n_classes} classes")
    return genres


def _read(uri: str, *, endpoint_url: str | None, what: str) -> bytes:
    where = Location.of(uri, endpoint_url=endpoint_url)
    try:
        with where.fs.open(where.path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ModelError(f"{what} {uri} does not exist") from None
    except IsADirectoryError:
        raise ModelError(f"{what} {uri} is a folder, not a file") from None
    except OSError as exc:
        raise ModelError(f"cannot read {what} {uri}: {exc}") from None


def import_keras(weights_uri: str, out_uri: str, *, genres: str | None = None, name: str | None = None,
                 config_uri: str | None = None, overwrite: bool = False, card: dict | None = None,
                 endpoint_url: str | None = None) -> dict:
    """Convert a Keras 2 Model 2 file into an mgr model directory.

    Parameters
    ----------
    weights_uri : str
        Local path or ``s3://`` URI of the ``.h5`` file.
    out_uri : str
        Model directory to write (``model.pt`` + ``model.json``).
    genres : str, optional
        Comma-separated vocabulary in output order (default: GTZAN's, for 10 classes).
    name : str, optional
        Model name (default: the file's stem).
    config_uri : str, optional
        Keras architecture (JSON/YAML) for a weights-only file.
    overwrite : bool
        Replace an existing model directory.
    card : dict, optional
        Model card entries (``data``, ``metrics``, ``licence``, ``provenance``) known from
        elsewhere (e.g. the registry's catalog), laid over the card the import writes:
        ``data`` and ``licence`` unstated, ``provenance`` the conversion's.

    Returns
    -------
    dict
        The written ``model.json`` content plus ``warnings`` (list of str, not written).
    """
    from mgr.config import PRESETS
    from mgr.audio.features import pad_value
    from mgr.models.modeldir import read_spec, save_model_dir
    from mgr.models import build_model

    data = _read(weights_uri, endpoint_url=endpoint_url, what="weights file")
    base = posixpath.basename(weights_uri.rstrip("/"))
    config_text = None
    if config_uri:
        config_text = _read(config_uri, endpoint_url=endpoint_url, what="architecture file").decode("utf8", "replace")
    km = read_keras_h5(data, origin=base, config_text=config_text, config_origin=posixpath.basename(config_uri or ""),
                       uri=weights_uri, endpoint_url=endpoint_url)
    vocabulary = parse_genres(genres, n_classes=km.n_classes)
    fcfg = PRESETS["paper"]
    if km.n_mels != fcfg.n_mels:
        raise ModelError(f"{base} expects {km.n_mels} mel bands; the paper feature preset has {fcfg.n_mels}")
    if not overwrite:
        try:
            read_spec(out_uri, endpoint_url=endpoint_url)
        except ModelError:
            pass
        else:
            raise ModelError(f"{out_uri} already holds a model; choose another folder or pass --overwrite")
    model_config = {"n_classes": km.n_classes, "n_mels": km.n_mels, "preset": "paper"}
    model = build_model("cnn", **model_config)
    model.load_state_dict(to_state_dict(km), strict=True)
    model.eval()
    stem = re.sub(r"\.(h5|hdf5)$", "", base, flags=re.I) or "keras-model"
    spec = {
        "name": name or stem,
        "architecture": "cnn",
        "model_config": model_config,
        "feature_config": fcfg.to_dict(),
        "genres": vocabulary,
        "window_frames": km.input_frames or fcfg.clip_frames,
        "pad_value": pad_value(fcfg),
        "normalization": None,
        "metrics": {},
        "provenance": {
            "method": "converted by mgr import-keras",
            "source": base,
            "source_uri": weights_uri,
            "sha256": hashlib.sha256(data).hexdigest(),
            "keras_version": km.keras_version,
            "backend": km.backend,
            "architecture_from": km.architecture_from,
        },
    }
    spec["card"] = _card(spec, card or {})
    save_model_dir(out_uri, model=model, spec=spec, endpoint_url=endpoint_url)
    return dict(spec, warnings=list(km.warnings))


def _card(spec: dict, extra: dict) -> dict:
    """The model card of an imported model: what the file says, plus ``extra`` (see import_keras)."""
    card = {
        "data": {"genres": list(spec["genres"]),
                 "training_data": "not stated in the Keras file; ask whoever published the weights"},
        "metrics": {"measured": spec["metrics"], "published": {}},
        "licence": {"name": "unspecified (that of the weights' publisher)", "url": None},
        "provenance": dict(spec["provenance"]),
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(card.get(key), dict):
            card[key] = {**card[key], **value}
        else:
            card[key] = value
    return card
