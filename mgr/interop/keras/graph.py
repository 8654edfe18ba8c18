"""Keras 2 model configs as layer graphs, and the check that a graph is the paper's Model 2.

Pure Python (PyYAML only for YAML architecture files); used by :mod:`mgr.interop.keras.importer`.
A graph is ``{layer name: {"name", "class_name", "config", "inbound": [names]}}``.
"""

from __future__ import annotations

import json
import re

from mgr.errors import ModelError

__all__ = ["PAPER_MODEL2", "parse_architecture", "graph_from_config", "infer_graph", "recognize"]

PAPER_MODEL2 = ("Conv1D(256, 4, strides 2) → ReLU → MaxPool(2) ×3, "
                "GlobalAveragePooling ∥ GlobalMaxPooling, Dropout, Dense(n), softmax")
FILTERS, KERNEL, STRIDE, POOL, BLOCKS = 256, 4, 2, 2, 3
# Keras 2 automatic layer names → layer class (longest prefixes first)
_AUTO_NAMES = (("global_average_pooling1d", "GlobalAveragePooling1D"),
               ("global_max_pooling1d", "GlobalMaxPooling1D"), ("max_pooling1d", "MaxPooling1D"),
               ("conv1d", "Conv1D"), ("activation", "Activation"), ("concatenate", "Concatenate"),
               ("dropout", "Dropout"), ("dense", "Dense"), ("input", "InputLayer"))


def _load_yaml(text: str) -> dict:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml comes with ray
        raise ModelError("reading a Keras YAML architecture needs PyYAML; install it or pass a JSON one") from None

    class _Loader(yaml.SafeLoader):
        pass

    # Keras 2 wrote tuples and (on Python 2) unicode strings with Python tags
    _Loader.add_constructor("tag:yaml.org,2002:python/tuple", lambda ld, n: ld.construct_sequence(n))
    _Loader.add_constructor("tag:yaml.org,2002:python/unicode", lambda ld, n: ld.construct_scalar(n))
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_architecture(text: str, *, origin: str) -> dict:
    try:
        arch = json.loads(text) if text.lstrip().startswith("{") else _load_yaml(text)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise ModelError(f"cannot parse the Keras architecture in {origin}: {str(exc).splitlines()[0]}") from None
    if not isinstance(arch, dict) or "class_name" not in arch or "config" not in arch:
        raise ModelError(f"{origin} is not a Keras model architecture (no class_name/config)")
    return arch


def graph_from_config(arch: dict, *, origin: str) -> tuple[dict, str]:
    """Keras model config → ``({name: {class_name, config, inbound}}, output layer name)``."""
    cls, cfg = arch["class_name"], arch["config"]
    layers = cfg if isinstance(cfg, list) else cfg.get("layers") if isinstance(cfg, dict) else None
    if not isinstance(layers, list) or not layers:
        raise ModelError(f"{origin}: the {cls} config lists no layers")
    graph, previous = {}, None
    for layer in layers:
        lcfg = layer.get("config") or {}
        name = layer.get("name") or lcfg.get("name")
        nodes = layer.get("inbound_nodes")
        if cls == "Sequential":
            inbound = [previous] if previous else []
        elif not nodes:
            inbound = []
        elif len(nodes) != 1 or not all(isinstance(t, (list, tuple)) for t in nodes[0]):
            raise ModelError(f"{origin}: layer {name!r} is shared or uses a graph format other than "
                             "Keras 2's; only the paper's Model 2 can be imported")
        else:
            inbound = [str(t[0]) for t in nodes[0]]
        graph[name] = {"name": name, "class_name": layer.get("class_name"), "config": lcfg, "inbound": inbound}
        previous = name
    if cls == "Sequential":
        if layers[0].get("class_name") != "InputLayer":
            shape = (layers[0].get("config") or {}).get("batch_input_shape")
            graph["<input>"] = {"name": "<input>", "class_name": "InputLayer", "inbound": [],
                                "config": {"batch_input_shape": shape}}
            graph[layers[0].get("name") or layers[0]["config"].get("name")]["inbound"] = ["<input>"]
        return graph, previous
    outputs = cfg.get("output_layers") or []
    if len(outputs) != 1:
        raise ModelError(f"{origin}: the model has {len(outputs)} outputs; Model 2 has one")
    return graph, str(outputs[0][0])


def infer_graph(layer_names: list[str], weights: dict) -> dict:
    """A Keras config for a weights-only file, from automatic layer names and weight shapes."""
    classes = []
    for name in layer_names:
        cls = next((c for prefix, c in _AUTO_NAMES if re.fullmatch(prefix + r"(_\d+)?", name)), None)
        if cls is None:
            raise ModelError(f"the file holds weights only and layer {name!r} is not a Keras automatic name; "
                             "give the architecture Keras wrote with --config FILE (model.to_json()/to_yaml())")
        classes.append(cls)
    graph, current, branch_src, branch = {}, None, None, []
    for i, (name, cls) in enumerate(zip(layer_names, classes)):
        # with no Activation layer after it, a layer's activation was fused into it
        fused = i + 1 < len(classes) and classes[i + 1] == "Activation"
        w = weights.get(name, {})
        cfg: dict = {"name": name}
        if cls == "Conv1D":
            k = w.get("kernel")
            cfg.update(filters=int(k.shape[-1]) if k is not None else None,
                       kernel_size=[int(k.shape[0])] if k is not None else None,
                       strides=[STRIDE], padding="valid", dilation_rate=[1],
                       activation="linear" if fused else "relu",
                       use_bias="bias" in w)
        elif cls == "Dense":
            k = w.get("kernel")
            cfg.update(units=int(k.shape[-1]) if k is not None else None,
                       activation="linear" if fused else "softmax",
                       use_bias="bias" in w)
        elif cls == "MaxPooling1D":
            cfg.update(pool_size=[POOL], strides=[POOL], padding="valid")
        elif cls == "Activation":
            cfg["activation"] = "softmax" if current and graph[current]["class_name"] == "Dense" else "relu"
        if cls == "InputLayer":
            inbound = []
        elif cls.startswith("Global"):
            branch_src = branch_src if branch else current
            inbound = [branch_src]
            branch.append(name)
        elif cls == "Concatenate":
            inbound, branch = list(branch), []
        else:
            inbound = [current] if current else []
        graph[name] = {"name": name, "class_name": cls, "config": cfg, "inbound": inbound}
        if not cls.startswith("Global"):
            current = name
    first = next(iter(graph.values()), None)
    if first is not None and first["class_name"] != "InputLayer":
        conv = weights.get(first["name"], {}).get("kernel")
        n_mels = int(conv.shape[1]) if conv is not None else None
        graph["<input>"] = {"name": "<input>", "class_name": "InputLayer", "inbound": [],
                            "config": {"batch_input_shape": [None, None, n_mels]}}
        first["inbound"] = ["<input>"]
    return graph


class _Recognizer:
    """Walk a Keras graph backwards from its output and check it is Model 2."""

    def __init__(self, graph: dict, origin: str) -> None:
        self.graph, self.origin, self.seen = graph, origin, set()

    def fail(self, detail: str):
        raise ModelError(f"{self.origin} is not the paper's Model 2 ({PAPER_MODEL2}): {detail}")

    def desc(self, layer: dict) -> str:
        act = f" {layer['config'].get('activation')}" if layer["class_name"] == "Activation" else ""
        return f"{layer['name']!r} ({layer['class_name']}{act})"

    def layer(self, name: str) -> dict:
        if name not in self.graph:
            self.fail(f"the config refers to an unknown layer {name!r}")
        self.seen.add(name)
        return self.graph[name]

    def inputs(self, layer: dict) -> list[dict]:
        out = []
        for name in layer["inbound"]:
            src = self.layer(name)
            while src["class_name"] in ("Dropout", "SpatialDropout1D", "GaussianDropout", "AlphaDropout"):
                if len(src["inbound"]) != 1:
                    self.fail(f"{self.desc(src)} has {len(src['inbound'])} inputs")
                src = self.layer(src["inbound"][0])  # identity at inference
            out.append(src)
        return out

    def prev(self, layer: dict) -> dict:
        ins = self.inputs(layer)
        if len(ins) != 1:
            self.fail(f"{self.desc(layer)} has {len(ins)} inputs, expected 1")
        return ins[0]

    def expect(self, layer: dict, name: str, key: str, want, got=None) -> None:
        got = layer["config"].get(key) if got is None else got
        norm = list(got) if isinstance(got, (list, tuple)) else got
        if norm != want:
            self.fail(f"{self.desc(layer)} has {key} {got!r}, expected {want!r} ({name})")

    @staticmethod
    def is_act(layer: dict, fn: str) -> bool:
        cfg = layer["config"]
        if layer["class_name"] == "Activation":
            return cfg.get("activation") == fn
        return (fn == "relu" and layer["class_name"] == "ReLU" and cfg.get("max_value") is None
                and not cfg.get("negative_slope") and not cfg.get("threshold"))

    def run(self, output: str) -> tuple[list[dict], dict, bool, dict]:
        """→ ``(conv layers in order, dense layer, gap_first, input layer)``."""
        out = self.layer(output)
        if self.is_act(out, "softmax"):
            dense = self.prev(out)
            fused = "linear"
        else:
            dense, fused = out, "softmax"
        if dense["class_name"] != "Dense":
            self.fail(f"the output should be Dense(n) then softmax, found {self.desc(dense)}")
        self.expect(dense, "Dense then softmax", "activation", fused)
        self.expect(dense, "Dense with bias", "use_bias", True, dense["config"].get("use_bias", True))
        cat = self.prev(dense)
        if cat["class_name"] != "Concatenate":
            self.fail(f"Dense should follow Concatenate(GAP, GMP), it follows {self.desc(cat)}")
        pools = self.inputs(cat)
        kinds = [p["class_name"] for p in pools]
        if sorted(kinds) != ["GlobalAveragePooling1D", "GlobalMaxPooling1D"]:
            self.fail(f"{self.desc(cat)} joins {kinds}, expected GlobalAveragePooling1D and GlobalMaxPooling1D")
        if cat["config"].get("axis", -1) not in (-1, 1):
            self.fail(f"{self.desc(cat)} concatenates on axis {cat['config'].get('axis')}, expected -1")
        for p in pools:
            if p["config"].get("data_format", "channels_last") != "channels_last":
                self.fail(f"{self.desc(p)} pools channels_first data")
        srcs = [self.prev(p) for p in pools]
        if srcs[0]["name"] != srcs[1]["name"]:
            self.fail(f"the global poolings read different layers ({srcs[0]['name']!r}, {srcs[1]['name']!r})")
        convs, node = [], srcs[0]
        while node["class_name"] != "InputLayer":
            if len(convs) == BLOCKS:
                self.fail(f"more than {BLOCKS} Conv1D blocks (found {self.desc(node)} before the third)")
            if node["class_name"] != "MaxPooling1D":
                self.fail(f"expected MaxPooling1D(2) ending a conv block, found {self.desc(node)}")
            self.expect(node, "MaxPooling1D(2)", "pool_size", [POOL])
            self.expect(node, "MaxPooling1D(2)", "strides", [POOL], node["config"].get("strides") or [POOL])
            self.expect(node, "valid pooling", "padding", "valid", node["config"].get("padding", "valid"))
            self.expect(node, "channels_last", "data_format", "channels_last",
                        node["config"].get("data_format") or "channels_last")
            act = self.prev(node)
            if self.is_act(act, "relu"):
                conv, fused = self.prev(act), "linear"
            elif act["class_name"] == "Conv1D" and act["config"].get("activation") == "relu":
                conv, fused = act, "relu"
            else:
                self.fail(f"{self.desc(node)} should follow a ReLU, it follows {self.desc(act)}")
            if conv["class_name"] != "Conv1D":
                self.fail(f"ReLU should follow Conv1D, it follows {self.desc(conv)}")
            c = conv["config"]
            self.expect(conv, "256 filters", "filters", FILTERS)
            self.expect(conv, "kernel 4", "kernel_size", [KERNEL])
            self.expect(conv, "stride 2", "strides", [STRIDE])
            self.expect(conv, "valid padding", "padding", "valid")
            self.expect(conv, "no dilation", "dilation_rate", [1], c.get("dilation_rate") or [1])
            self.expect(conv, "ReLU after it", "activation", fused)
            self.expect(conv, "Conv1D with bias", "use_bias", True, c.get("use_bias", True))
            self.expect(conv, "channels_last", "data_format", "channels_last", c.get("data_format") or "channels_last")
            convs.append(conv)
            node = self.prev(conv)
        if len(convs) != BLOCKS:
            self.fail(f"{len(convs)} Conv1D blocks, expected {BLOCKS}")
        extra = [self.desc(g) for n, g in self.graph.items() if n not in self.seen
                 and g["class_name"] not in ("Dropout", "InputLayer")]
        if extra:
            self.fail(f"unexpected layer(s) {', '.join(extra)}")
        return convs[::-1], dense, kinds[0] == "GlobalAveragePooling1D", node


def recognize(graph: dict, output: str, *, origin: str) -> tuple[list[dict], dict, bool, dict]:
    """Check that ``graph`` (ending in layer ``output``) is Model 2.

    Returns
    -------
    convs : list of dict
        The three Conv1D layers, input first.
    dense : dict
        The Dense layer.
    gap_first : bool
        True when the concatenation is [GAP, GMP] (mgr's order).
    input_layer : dict

    Raises
    ------
    ModelError
        Naming the first layer that differs from Model 2 (or an unexpected extra layer).
    """
    return _Recognizer(graph, origin).run(output)
