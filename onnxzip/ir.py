"""The intermediate representation: one :class:`ModelIR` per task.

A ``ModelIR`` owns a normalized onnx-graphsurgeon graph (edited only by :mod:`onnxzip.normalize`),
a networkx index of it (read only), its zippable :class:`Layer` records and the channel space of
every tensor that carries a layer's neurons.

How each op treats channels (:func:`channel_rule`) is defined here once, and used by alignment,
statistics and emission alike. Channels live on axis 1 (NCHW tensors, (N, F) features).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .errors import InputError, UnsupportedOpError
from .io import InputSpec
from .normalize import normalize, prepare

#: Elementwise ops of one tensor input: they pass every channel through on its own.
UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus", "Softsign", "HardSigmoid",
    "HardSwish", "Gelu", "Mish", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Ceil", "Floor",
    "Round", "Sign", "Sin", "Cos", "ThresholdedRelu", "Clip", "Identity",
})
#: Pooling ops: per-channel windows.
POOL = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
#: Elementwise ops of two inputs; with one constant input they act per channel.
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu"})


@dataclass(frozen=True)
class Layer:
    """A zippable linear layer of one task's normalized graph.

    ``shape`` is the weight shape: (out, in) for dense, (out, in, kh, kw...) for conv.
    ``attrs`` holds conv attributes (kernel_shape, strides, pads, dilations, auto_pad) as sorted pairs.
    """

    name: str
    kind: str  # "dense" | "conv"
    input: str
    output: str
    weight: str
    bias: str
    shape: tuple[int, ...]
    attrs: tuple[tuple[str, object], ...] = ()

    @property
    def neurons(self) -> int:
        return self.shape[0]

    @property
    def kernel(self) -> int:
        """Weights per input channel (1 for dense)."""
        return int(np.prod(self.shape[2:], dtype=np.int64))

    @property
    def fan_in(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64))

    def attr(self, key: str, default: object = None) -> object:
        return dict(self.attrs).get(key, default)


@dataclass(frozen=True)
class ChannelSpace:
    """The channels of layer ``layer`` (its index in ``ModelIR.layers``) as seen by a tensor.

    ``block`` is the number of features per channel along axis 1: 1 for a (N, C, ...) tensor,
    H*W after a Flatten of a (N, C, H, W) tensor.
    """

    layer: int
    block: int = 1


@dataclass
class ModelIR:
    """One task: the normalized graph, its index, layers and channel spaces."""

    name: str
    source: str
    graph: gs.Graph
    layers: list[Layer]
    spaces: dict[str, ChannelSpace]
    hidden: list[int]  # indices of layers whose channels reach another layer (zippable)
    index: nx.DiGraph = field(repr=False)
    ir_version: int = 8
    opset: int = 17
    extra_opsets: dict[str, int] = field(default_factory=dict)

    @property
    def inputs(self) -> list[InputSpec]:
        return [InputSpec(t.name, np.dtype(t.dtype), _dims(t.shape)) for t in self.graph.inputs]

    @property
    def outputs(self) -> list[str]:
        return [t.name for t in self.graph.outputs]

    def weights(self, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
        """The layer's (W, b) as stored: W of ``layer.shape``, b (out,)."""
        t = self.graph.tensors()
        return np.asarray(t[layer.weight].values), np.asarray(t[layer.bias].values)

    def node(self, name: str) -> gs.Node:
        return self.index.nodes[name]["node"]

    def to_onnx(self) -> onnx.ModelProto:
        """The normalized graph as a model (for running; the graph itself is not changed)."""
        model = gs.export_onnx(self.graph.copy(), do_type_check=False)
        model.ir_version = self.ir_version
        del model.opset_import[:]
        model.opset_import.extend([onnx.helper.make_opsetid("", self.opset)] +
                                  [onnx.helper.make_opsetid(d, v) for d, v in sorted(self.extra_opsets.items())])
        return model


def _dims(shape) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in (shape or ()))


def build_ir(model: onnx.ModelProto, name: str, source: str, opset: int) -> ModelIR:
    """Normalize ``model`` (a copy) into a :class:`ModelIR` for task ``name``."""
    graph = prepare(model, opset, source)
    try:
        normalize(graph)
    except UnsupportedOpError as exc:
        raise UnsupportedOpError(f"{source}: {exc}") from None
    if not graph.inputs:
        raise InputError(f"{source}: the model has no inputs")
    layers = _find_layers(graph)
    index = _index(graph)
    try:
        spaces, hidden = trace_spaces(graph, layers)
    except UnsupportedOpError as exc:
        raise UnsupportedOpError(f"{source}: {exc}") from None
    extra = {o.domain: o.version for o in model.opset_import if o.domain not in ("", "ai.onnx")}
    return ModelIR(name, source, graph, layers, spaces, hidden, index, max(model.ir_version, 7), opset, extra)


def _find_layers(graph: gs.Graph) -> list[Layer]:
    layers = []
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm") or not all(isinstance(t, gs.Constant) for t in node.inputs[1:3]):
            continue
        w, b = node.inputs[1], node.inputs[2]
        if node.op == "Gemm":
            layers.append(Layer(node.name, "dense", node.inputs[0].name, node.outputs[0].name, w.name, b.name,
                                tuple(w.values.shape)))
            continue
        if int(node.attrs.get("group", 1)) != 1:
            continue  # grouped conv: not a zippable layer (trace_spaces rejects it on a zipped space)
        keys = ("auto_pad", "dilations", "kernel_shape", "pads", "strides")
        attrs = tuple(sorted((k, _plain(node.attrs[k])) for k in keys if k in node.attrs))
        layers.append(Layer(node.name, "conv", node.inputs[0].name, node.outputs[0].name, w.name, b.name,
                            tuple(w.values.shape), attrs))
    return layers


def _plain(v: object) -> object:
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    return v.decode() if isinstance(v, bytes) else v


def _index(graph: gs.Graph) -> nx.DiGraph:
    """An op-labelled DiGraph: node name -> attrs (op, node); edges carry the input slot."""
    g = nx.DiGraph()
    for node in graph.nodes:
        g.add_node(node.name, op=node.op, node=node)
    for node in graph.nodes:
        for slot, t in enumerate(node.inputs):
            for producer in t.inputs:
                g.add_edge(producer.name, node.name, slot=slot)
    return g


def channel_rule(node: gs.Node, spaced: int) -> str:
    """How ``node`` treats the channels of its input number ``spaced`` (a tensor in a channel space).

    Returns one of ``"layer"``, ``"unary"``, ``"pool"``, ``"binary"``, ``"flatten"``; raises
    :class:`UnsupportedOpError` naming the node for anything else.
    """
    op = node.op
    if op in ("Conv", "Gemm") and spaced == 0 and all(isinstance(t, gs.Constant) for t in node.inputs[1:3]):
        if op == "Conv" and int(node.attrs.get("group", 1)) != 1:
            raise UnsupportedOpError(f"node {node.name!r} (Conv, group={node.attrs['group']}): grouped "
                                     "convolution on zipped channels is not supported yet")
        return "layer"
    if op in UNARY and spaced == 0:
        if op == "Clip" and not all(isinstance(t, gs.Constant) for t in node.inputs[1:] if t.name):
            raise UnsupportedOpError(f"node {node.name!r} (Clip): bounds must be constants")
        return "unary"
    if op in POOL and spaced == 0:
        if len(node.outputs) > 1 and node.outputs[1].outputs:
            raise UnsupportedOpError(f"node {node.name!r} ({op}): the Indices output is not supported")
        return "pool"
    if op in BINARY and len(node.inputs) == 2 and isinstance(node.inputs[1 - spaced], gs.Constant):
        x, c = node.inputs[spaced], np.asarray(node.inputs[1 - spaced].values)
        if x.shape is not None and len(x.shape) >= 2 and c.ndim <= len(x.shape) and \
                (c.ndim < len(x.shape) or c.shape[0] == 1) and \
                channel_dim(c, len(x.shape)) in (None, 1, x.shape[1]):
            return "binary"
    if op == "Flatten" and int(node.attrs.get("axis", 1)) == 1 and spaced == 0:
        return "flatten"
    raise UnsupportedOpError(f"node {node.name!r} ({op}) consumes zipped channels in a way onnxzip does not "
                             "model; it would be unsafe to guess (supported between layers: elementwise "
                             "activations, pooling, Flatten, elementwise ops with constants)")


def channel_dim(c: np.ndarray, rank: int) -> int | None:
    """The size of a constant's axis aligned with axis 1 of a rank-``rank`` tensor (None if absent)."""
    axis = c.ndim - (rank - 1)
    return c.shape[axis] if 0 <= axis < c.ndim else None


def trace_spaces(graph: gs.Graph, layers: list[Layer]) -> tuple[dict[str, ChannelSpace], list[int]]:
    """Follow every layer's output channels through the graph.

    A layer is hidden (zippable) when its channels reach another layer. Heads (the rest) keep
    their outputs in order, so any op may follow them.

    Returns:
        tensor name -> the hidden-layer channel space it carries; indices of the hidden layers.
        Raises :class:`UnsupportedOpError` for an op that mixes a hidden layer's channels unknowably.
    """
    by_node = {layer.name: i for i, layer in enumerate(layers)}
    hidden = {i for i, layer in enumerate(layers) if _reaches_layer(graph, layer, by_node)}
    spaces: dict[str, ChannelSpace] = {}
    blocked: list[tuple[int, UnsupportedOpError]] = []
    for node in graph.nodes:  # topologically sorted by normalize
        inputs = [(i, spaces[t.name]) for i, t in enumerate(node.inputs) if t.name in spaces]
        if node.name in by_node and (not inputs or inputs[0][0] == 0):
            spaces[node.outputs[0].name] = ChannelSpace(by_node[node.name])
        if not inputs:
            continue
        if len(inputs) > 1:
            err = UnsupportedOpError(f"node {node.name!r} ({node.op}) joins zipped channel spaces; "
                                     "joins (residuals, concat) are not supported yet")
            blocked += [(space.layer, err) for _, space in inputs]
            continue
        slot, space = inputs[0]
        try:
            rule = channel_rule(node, slot)
        except UnsupportedOpError as err:
            blocked.append((space.layer, err))
            continue
        if rule == "layer":
            continue  # its output carries its own channels (set above)
        if rule == "flatten":
            shape = node.inputs[0].shape
            if shape is None or not all(isinstance(d, int) for d in shape[2:]):
                blocked.append((space.layer, UnsupportedOpError(
                    f"node {node.name!r} (Flatten): the spatial size of its input is unknown")))
                continue
            spaces[node.outputs[0].name] = ChannelSpace(space.layer, space.block * int(np.prod(shape[2:])))
        else:
            spaces[node.outputs[0].name] = space
    for layer, err in blocked:
        if layer in hidden:
            raise err
    return {k: v for k, v in spaces.items() if v.layer in hidden}, sorted(hidden)


def _reaches_layer(graph: gs.Graph, layer: Layer, by_node: dict[str, int]) -> bool:
    """Whether any path of ops from ``layer``'s output reaches another layer."""
    start = next(n for n in graph.nodes if n.name == layer.name).outputs[0]
    todo, seen = [start], set()
    while todo:
        t = todo.pop()
        for consumer in t.outputs:
            if consumer.name in by_node:
                return True
            if consumer.name not in seen:
                seen.add(consumer.name)
                todo.extend(consumer.outputs)
    return False

def reorder(ir: ModelIR, names: list[str]) -> ModelIR:
    """A ModelIR whose nodes follow ``names`` (a topological order), layers re-listed in that order."""
    by_name = {n.name: n for n in ir.graph.nodes}
    ir.graph.nodes = [by_name[n] for n in names]
    layers = _find_layers(ir.graph)
    spaces, hidden = trace_spaces(ir.graph, layers)
    return ModelIR(ir.name, ir.source, ir.graph, layers, spaces, hidden, _index(ir.graph), ir.ir_version,
                   ir.opset, dict(ir.extra_opsets))
