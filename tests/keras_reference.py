"""An independent numpy forward pass of the Keras layers of Model 2, and Keras 2 h5 writers.

The forward pass follows Keras's definitions, in float64, on Keras's layout: input
``[T, n_mels]`` (time major, channels last), Conv1D kernels ``[k, in, out]``, Dense kernels
``[in, out]``. It does not use mgr's code. The writers build HDF5 files laid out as Keras 2
wrote them (``model.save`` and ``model.save_weights``), from a Keras 2 model config.
"""

from __future__ import annotations

import copy
import json

import numpy as np

GTZAN = ["blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock"]


# ---------------------------------------------------------------- Keras layers in numpy
def conv1d_valid(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, *, stride: int) -> np.ndarray:
    """Keras Conv1D, padding ``valid``: ``[T, in]`` → ``[floor((T - k) / stride) + 1, out]``.

    ``y[t, o] = b[o] + Σ_j Σ_i x[t * stride + j, i] · W[j, i, o]`` (a cross-correlation).
    """
    k = kernel.shape[0]
    n_out = (x.shape[0] - k) // stride + 1
    y = np.tile(bias.astype(np.float64), (n_out, 1))
    for j in range(k):
        taps = x[j: j + stride * (n_out - 1) + 1: stride]  # x[t*stride + j] for every t
        y += taps @ kernel[j].astype(np.float64)
    return y


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def max_pool1d(x: np.ndarray, pool: int = 2) -> np.ndarray:
    """Keras MaxPooling1D(pool), strides = pool, ``valid``: trailing frames that fill no pool are dropped."""
    n = x.shape[0] // pool
    return x[: n * pool].reshape(n, pool, x.shape[1]).max(axis=1)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def model2_probs(x: np.ndarray, weights: dict, *, gap_first: bool = True, stride: int = 2, pool: int = 2) -> np.ndarray:
    """Model 2 on one clip.

    Parameters
    ----------
    x : np.ndarray
        ``[T, n_mels]`` log-mel frames (Keras layout).
    weights : dict
        ``{"conv1d_1": {"kernel", "bias"}, "conv1d_2": ..., "conv1d_3": ..., "dense_1": ...}``.
    gap_first : bool
        Concatenation order ([GAP, GMP] when True).

    Returns
    -------
    np.ndarray
        ``[n_classes]`` float64 probabilities.
    """
    h = np.asarray(x, dtype=np.float64)
    for name in ("conv1d_1", "conv1d_2", "conv1d_3"):
        h = max_pool1d(relu(conv1d_valid(h, weights[name]["kernel"], weights[name]["bias"], stride=stride)), pool)
    gap, gmp = h.mean(axis=0), h.max(axis=0)
    feats = np.concatenate([gap, gmp] if gap_first else [gmp, gap])
    # Dropout is the identity at inference
    logits = feats @ weights["dense_1"]["kernel"].astype(np.float64) + weights["dense_1"]["bias"]
    return softmax(logits)


def min_frames(*, kernel: int = 4, stride: int = 2, pool: int = 2, blocks: int = 3) -> int:
    """Shortest input that Keras can run through the blocks (one frame left at the end)."""
    t = 1
    while True:
        n = t
        for _ in range(blocks):
            n = (n - kernel) // stride + 1 if n >= kernel else 0
            n //= pool
        if n >= 1:
            return t
        t += 1


# ---------------------------------------------------------------- Keras 2 files
def _layer(cls: str, name: str, inbound: list[str] | None, **config) -> dict:
    nodes = [] if inbound is None else [[[src, 0, 0, {}] for src in inbound]]
    return {"class_name": cls, "name": name, "config": dict(name=name, trainable=True, **config),
            "inbound_nodes": nodes}


def conv_layer(name: str, inbound: str, *, filters=256, kernel=4, stride=2, activation="linear") -> dict:
    init = {"class_name": "VarianceScaling",
            "config": {"distribution": "uniform", "mode": "fan_avg", "scale": 1.0, "seed": None}}
    return _layer("Conv1D", name, [inbound], filters=filters, kernel_size=[kernel], strides=[stride],
                  padding="valid", dilation_rate=[1], activation=activation, use_bias=True,
                  kernel_initializer=init, bias_initializer={"class_name": "Zeros", "config": {}},
                  kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                  kernel_constraint=None, bias_constraint=None)


def model2_config(n_classes: int, *, n_mels: int = 128, frames: int | None = 647, kernel: int = 4,
                  stride: int = 2, gap_first: bool = True) -> dict:
    """Keras 2 ``{"class_name": "Model", "config": ...}`` of Model 2, as Keras 2.0 wrote it."""
    layers = [_layer("InputLayer", "input_1", None, batch_input_shape=[None, frames, n_mels],
                     dtype="float32", sparse=False)]
    prev = "input_1"
    for i in (1, 2, 3):
        layers.append(conv_layer(f"conv1d_{i}", prev, kernel=kernel, stride=stride))
        layers.append(_layer("Activation", f"activation_{i}", [f"conv1d_{i}"], activation="relu"))
        layers.append(_layer("MaxPooling1D", f"max_pooling1d_{i}", [f"activation_{i}"],
                             pool_size=[2], strides=[2], padding="valid"))
        prev = f"max_pooling1d_{i}"
    layers.append(_layer("GlobalAveragePooling1D", "global_average_pooling1d_1", [prev]))
    layers.append(_layer("GlobalMaxPooling1D", "global_max_pooling1d_1", [prev]))
    order = ["global_average_pooling1d_1", "global_max_pooling1d_1"]
    layers.append(_layer("Concatenate", "concatenate_1", order if gap_first else order[::-1], axis=-1))
    layers.append(_layer("Dropout", "dropout_1", ["concatenate_1"], rate=0.5, noise_shape=None, seed=None))
    dense = conv_layer("dense_1", "dropout_1")
    dense["class_name"] = "Dense"
    for key in ("filters", "kernel_size", "strides", "padding", "dilation_rate"):
        dense["config"].pop(key)
    dense["config"]["units"] = n_classes
    layers.append(dense)
    layers.append(_layer("Activation", "activation_4", ["dense_1"], activation="softmax"))
    return {"class_name": "Model", "config": {"name": "model_1", "layers": layers,
                                              "input_layers": [["input_1", 0, 0]],
                                              "output_layers": [["activation_4", 0, 0]]}}


def random_weights(n_classes: int, *, n_mels: int = 128, kernel: int = 4, seed: int = 0) -> dict:
    """Glorot-uniform kernels and small random biases, float32, in Keras layout."""
    rng = np.random.default_rng(seed)

    def glorot(shape, fan_in, fan_out):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=shape).astype(np.float32)

    w = {}
    for i, c_in in ((1, n_mels), (2, 256), (3, 256)):
        w[f"conv1d_{i}"] = {"kernel": glorot((kernel, c_in, 256), kernel * c_in, kernel * 256),
                            "bias": rng.normal(0, 0.05, 256).astype(np.float32)}
    w["dense_1"] = {"kernel": glorot((512, n_classes), 512, n_classes),
                    "bias": rng.normal(0, 0.05, n_classes).astype(np.float32)}
    return w


def _write_layers(group, layer_names: list[str], weights: dict) -> None:
    group.attrs["layer_names"] = [n.encode("utf8") for n in layer_names]
    for name in layer_names:
        g = group.create_group(name)
        roles = [r for r in ("kernel", "bias") if r in weights.get(name, {})]
        g.attrs["weight_names"] = [f"{name}/{r}:0".encode("utf8") for r in roles] if roles else np.zeros(0)
        for r in roles:
            arr = weights[name][r]
            g.create_dataset(f"{name}/{r}:0", data=arr, dtype=arr.dtype)  # → <layer>/<layer>/<r>:0


def write_keras_h5(path, config: dict, weights: dict, *, layout: str = "model", keras_version: str = "2.0.9",
                   backend: str = "tensorflow") -> None:
    """Write a Keras 2 HDF5 file.

    Parameters
    ----------
    config : dict
        ``{"class_name", "config"}`` model config; its layer order is the file's ``layer_names``.
    weights : dict
        ``{layer name: {"kernel": array, "bias": array}}``.
    layout : {"model", "weights"}
        ``model``: as ``model.save`` (``model_config`` attribute, ``model_weights`` group);
        ``weights``: as ``model.save_weights`` (layer groups at the root, no config).
    """
    import h5py

    names = [layer["name"] for layer in config["config"]["layers"]]
    with h5py.File(path, "w") as f:
        if layout == "model":
            f.attrs["keras_version"] = keras_version.encode("utf8")
            f.attrs["backend"] = backend.encode("utf8")
            f.attrs["model_config"] = json.dumps(config).encode("utf8")
            f.attrs["training_config"] = json.dumps(
                {"optimizer_config": {"class_name": "Adam", "config": {"lr": 1e-4}},
                 "loss": "categorical_crossentropy", "metrics": ["accuracy"],
                 "sample_weight_mode": None, "loss_weights": None}).encode("utf8")
            group = f.create_group("model_weights")
            group.attrs["keras_version"] = keras_version.encode("utf8")
            group.attrs["backend"] = backend.encode("utf8")
        else:
            f.attrs["keras_version"] = keras_version
            f.attrs["backend"] = backend
            group = f
        _write_layers(group, names, weights)


def keras_json(config: dict, *, keras_version: str = "2.0.9", backend: str = "tensorflow") -> str:
    """``model.to_json()`` of a model config (what a sidecar ``.json`` holds)."""
    return json.dumps(dict(copy.deepcopy(config), keras_version=keras_version, backend=backend))


def real_weights(path) -> dict:
    """The Model 2 arrays of a Keras 2 weights file, read by their documented paths."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        for name in ("conv1d_1", "conv1d_2", "conv1d_3", "dense_1"):
            out[name] = {r: np.asarray(root[f"{name}/{name}/{r}:0"]) for r in ("kernel", "bias")}
    return out
