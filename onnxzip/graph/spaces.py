"""Channel spaces: which tensor axes carry which layer's neurons, and the ties between layers.

Channels live on axis 1 of NCHW tensors and (rows, features) dense inputs, and on the last axis of
token-major tensors ((batch, tokens, features) or (tokens, batch, features)); shape ops move the
axis (Transpose, Reshape that keeps the trailing features, Gather/Squeeze of other axes). A tensor
that carries zipped channels has a :class:`ChannelSpace`: a sequence of :class:`Segment` (one per
Concat input; a segment is a hidden layer's channels, or channels that are ALIGNED across tasks such
as an input image, or PRIVATE, in each task's own order), a ``block`` (features per channel after a
Flatten) and the ``axis`` that holds them.

Ops tie spaces together (union-find over layers): elementwise joins of two zipped tensors
(Add/Sum/Sub/Mul/Max/...; residuals) tie their segments, so every layer writing into one residual
stream shares one matching (a *group*). Depthwise convs follow their input's channels.

An op whose channel semantics onnxzip does not model (LRN, grouped conv, channel shuffles, ...)
gets its zipped inputs restored to each task's channel order (Concat + Gather) and its outputs are
PRIVATE. This is always exact; it only costs sharing downstream, and it is reported.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UnsupportedOpError
from .attention import TiedHeads, core_nodes, tied_heads
from .axes import REDUCE, moved_axis, op_axes

log = logging.getLogger(__name__)
ALIGNED, PRIVATE = -2, -1

#: Elementwise ops of one tensor input: they pass every channel through on its own.
UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus", "Softsign", "HardSigmoid",
    "HardSwish", "Gelu", "Mish", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Ceil", "Floor",
    "Round", "Sign", "Sin", "Cos", "ThresholdedRelu", "Clip", "Identity", "Dropout", "Cast",
})
#: Pooling ops: per-channel windows.
POOL = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
#: Elementwise ops of two or more inputs: per channel with constants, joins between zipped tensors.
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Sum", "Mean"})

#: the axis on which Conv, Gemm, BatchNormalization, pooling and Flatten read and write channels (the
#: ONNX ops fix it: NCHW maps, (rows, features) matrices). Every layer's input and output carries its
#: channels there; a channel space elsewhere (after a Transpose, in token-major tensors) says its own
#: axis (:attr:`ChannelSpace.axis`).
LAYER_AXIS = 1


@dataclass(frozen=True)
class Segment:
    """``count`` channels of hidden layer ``layer`` (an index into ``ModelIR.layers``), or ALIGNED/PRIVATE."""

    layer: int
    count: int


@dataclass(frozen=True)
class ChannelSpace:
    segments: tuple[Segment, ...]
    block: int = 1
    axis: int = LAYER_AXIS  # the tensor axis that holds the channels (non-negative)

    @property
    def channels(self) -> int:
        return sum(s.count for s in self.segments)


@dataclass
class Spaces:
    """The result of tracing one task's graph.

    ``layout``: tensor -> space, for tensors carrying zipped channels. ``private``: tensors in task
    order derived from restored ones. ``groups``: hidden layers (not followers) per matching group,
    each in topological order. ``followers``: depthwise layers, which follow their input's channels.
    ``restore``: node -> input slots restored to task order before it.
    """

    layout: dict[str, ChannelSpace]
    hidden: list[int]
    groups: list[list[int]]
    followers: list[int]
    restore: dict[str, list[int]] = field(default_factory=dict)
    private: set[str] = field(default_factory=set)
    plain: set[int] = field(default_factory=set)  # layers replayed as ordinary ops (grouped/depthwise convs)
    normalized: set[int] = field(default_factory=set)  # layers whose output a per-sample channel norm reads
    heads: list[TiedHeads] = field(default_factory=list)  # attention blocks whose heads are tied
    untied: frozenset[str] = frozenset()  # Q layers of blocks a check on samples untied

    def cores(self) -> dict[str, TiedHeads]:
        """Node name -> the tied block whose core it is in."""
        return core_nodes(self.heads)

    def unit(self, layer: int) -> int:
        """The neurons of ``layer`` that move together in a matching: a head's width where the
        layer is a tied Q, K or V, else 1."""
        return next((h.width for h in self.heads if layer in (h.q, h.k, h.v)), 1)


class _UnionFind:
    """Union-find over layer indices whose root is a group's smallest member (groups are numbered
    and named by it; networkx.utils.UnionFind roots at the larger set instead)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def channel_dim(c: np.ndarray, rank: int, axis: int = LAYER_AXIS) -> int | None:
    """The size of a constant's axis aligned with axis ``axis`` of a rank-``rank`` tensor under
    broadcasting (None if absent)."""
    a = c.ndim - (rank - axis)
    return c.shape[a] if 0 <= a < c.ndim else None


def is_depthwise(node: gs.Node) -> bool:
    """A Conv with one filter per input channel (group == channels, multiplier 1)."""
    w = node.inputs[1]
    g = int(node.attrs.get("group", 1))
    return node.op == "Conv" and isinstance(w, gs.Constant) and g > 1 and w.values.shape[1] == 1 \
        and w.values.shape[0] == g


def channel_rule(node: gs.Node, slot: int, channels: int, axis: int = LAYER_AXIS) -> str:
    """How ``node`` treats the channels of its input ``slot`` (``channels`` wide, on ``axis``).

    Returns ``"layer"``, ``"follower"``, ``"unary"``, ``"pool"``, ``"binary"``, ``"affine"``,
    ``"flatten"``, ``"keep"`` (shape ops that keep the channel axis whole; :func:`moved_axis` says
    where it goes), ``"concat"``, ``"stack"`` (a Concat along another axis), ``"reduce"`` (a
    reduction over the channel axis: its result carries no channels, whatever their order),
    ``"shape"`` (a Shape: of one part where it leaves out the channel axis, else of the parts
    joined), ``"normalize"`` (LayerNormalization from the channel axis on), or ``"restore"``.
    """
    op, x = node.op, node.inputs[slot]
    rank = len(x.shape) if x.shape is not None else None
    if axis != LAYER_AXIS and (op in ("Conv", "Gemm", "Flatten", "BatchNormalization", "InstanceNormalization")
                               or op in POOL):
        return "restore"  # these read channels on the layer axis only
    if op in ("Conv", "Gemm") and slot == 0 and all(isinstance(t, gs.Constant) for t in node.inputs[1:3]):
        if op == "Gemm" or int(node.attrs.get("group", 1)) == 1:
            return "layer"
        return "follower" if is_depthwise(node) else "restore"
    if op in UNARY and slot == 0:
        if op == "Clip" and not all(isinstance(t, gs.Constant) for t in node.inputs[1:] if t.name):
            return "restore"
        return "unary"
    if op in POOL and slot == 0 and not (len(node.outputs) > 1 and node.outputs[1].outputs):
        return "pool"
    if op == "BatchNormalization" and slot == 0 and all(isinstance(t, gs.Constant) for t in node.inputs[1:5]):
        return "affine"
    if op == "InstanceNormalization" and slot == 0 and all(isinstance(t, gs.Constant) for t in node.inputs[1:3]):
        return "affine"  # per channel, over its own spatial positions
    if op == "LayerNormalization" and slot == 0 and rank is not None and _normalizes_channels(node, rank, axis):
        return "normalize"
    if op in REDUCE and slot == 0 and rank is not None and _reduces_channels(node, rank, axis):
        return "reduce"
    if op == "Shape":
        return "shape"
    if op in BINARY and rank is not None and rank >= 2:
        consts = [t for i, t in enumerate(node.inputs) if i != slot and isinstance(t, gs.Constant)]
        if all(_per_channel(np.asarray(c.values), rank, channels, axis) for c in consts):
            return "binary"
        return "restore"
    if op == "Flatten" and int(node.attrs.get("axis", 1)) == 1 and slot == 0:
        return "flatten"
    if op == "Concat" and rank is not None:
        return "concat" if int(node.attrs["axis"]) % rank == axis else "stack"
    if slot == 0 and rank is not None and moved_axis(node, rank, axis) is not None:
        return "keep"
    return "restore"


def _per_channel(c: np.ndarray, rank: int, channels: int, axis: int = 1) -> bool:
    """A constant that broadcasts per channel (or not at all along the channel axis), never along
    the batch."""
    return c.ndim <= rank and (c.ndim < rank or c.shape[0] == 1) and channel_dim(c, rank, axis) in (None, 1, channels)


def _reduces_channels(node: gs.Node, rank: int, axis: int = 1) -> bool:
    """A reduction whose axes include the channel axis (no axes: all of them, unless a no-op)."""
    axes = op_axes(node)
    if axes is None:
        return False
    if not axes:
        return not int(node.attrs.get("noop_with_empty_axes", 0))
    return axis in {a % rank for a in axes}


def _normalizes_channels(node: gs.Node, rank: int, axis: int = 1) -> bool:
    """LayerNormalization over the channel axis and every axis after it, with constant scale and bias."""
    return int(node.attrs.get("axis", -1)) % rank == axis and all(
        isinstance(t, gs.Constant) for t in node.inputs[1:] if t.name)


def broadcasts_channels(t: gs.Tensor, rank: int, axis: int = 1) -> bool:
    """A tensor of known shape that holds no channel axis for a rank-``rank`` operand (its axis
    aligned with the channel axis is absent or 1): a per-sample value such as a LayerNorm mean."""
    if t.shape is None or len(t.shape) > rank:
        return False
    a = len(t.shape) - (rank - axis)
    return a < 0 or t.shape[a] == 1


def trace(graph: gs.Graph, layers: list, untied: frozenset[str] = frozenset()) -> Spaces:
    """Follow every hidden layer's channels through ``graph`` (topologically sorted).

    A layer is hidden (zippable) when a path of ops leads from its output to another layer; the
    others are heads, whose outputs stay in task order. Attention blocks whose heads can be tied
    (:func:`onnxzip.graph.attention.tied_heads`, less the Q layers named in ``untied``) tie Q, K
    and V into one group, and their core passes V's channels to the output projection.
    """
    by_node = {layer.name: i for i, layer in enumerate(layers)}
    hidden = sorted(i for i, layer in enumerate(layers) if _reaches_layer(graph, layer, by_node))
    tied = tied_heads(graph, layers, hidden, untied)
    core = core_nodes(tied)
    ties = _UnionFind()
    for h in tied:
        ties.union(h.q, h.k)
        ties.union(h.q, h.v)
    layout: dict[str, ChannelSpace] = {}
    private: set[str] = set()
    restore: dict[str, list[int]] = {}
    followers: list[int] = []
    plain: set[int] = set()  # depthwise convs that are not zipped
    for node in graph.nodes:
        if node.name in core:  # a tied core: replayed as it is; its exit carries V's channels
            _core_exit(node, core[node.name], layers, layout)
            continue
        zipped = [i for i, t in enumerate(node.inputs) if t.name in layout]
        tainted = any(t.name in private for t in node.inputs)
        index = by_node.get(node.name)
        if not zipped:
            if index is not None and layers[index].kind == "depthwise":
                plain.add(index)  # a depthwise conv on unzipped channels is an ordinary op
                index = None
            if index is not None and index in hidden:
                layout[node.outputs[0].name] = _layer_space(node, layers[index], index)
            elif tainted and index is None:
                private.update(t.name for t in node.outputs)
            continue
        slot = zipped[0]
        space = layout[node.inputs[slot].name]
        rule = channel_rule(node, slot, space.channels, space.axis)
        if rule == "binary" and sum(1 for t in node.inputs if not isinstance(t, gs.Constant)) > 1 or rule == "stack":
            rule = _join(node, layout, ties, slot)
        elif rule in ("concat",):
            rule = _concat(node, layout, private, space.axis)
        if rule == "layer":
            if index in hidden:
                layout[node.outputs[0].name] = ChannelSpace((Segment(index, layers[index].neurons),))
        elif rule == "follower" and index is not None:
            followers.append(index)
            if index in hidden:
                layout[node.outputs[0].name] = space
        elif rule == "flatten":
            shape = node.inputs[0].shape
            if shape is None or not all(isinstance(d, int) for d in shape[2:]):
                rule = "restore"
            else:
                layout[node.outputs[0].name] = ChannelSpace(space.segments, space.block * int(np.prod(shape[2:])))
        elif rule == "keep":
            axis = moved_axis(node, len(node.inputs[slot].shape), space.axis)
            layout[node.outputs[0].name] = ChannelSpace(space.segments, space.block, axis)
        elif rule in ("unary", "pool", "affine", "binary", "stack", "normalize"):
            layout[node.outputs[0].name] = space
        if rule == "restore":
            if index is not None:
                plain.add(index)
            restore[node.name] = zipped
            private.update(t.name for t in node.outputs)
            log.info("node %r (%s) needs each task's own channel order: its inputs are restored", node.name, node.op)
    hidden = [i for i in hidden if i not in plain]
    lost = [layers[h.q].name for h in tied if not _still_tied(h, hidden, layers, layout)]
    if lost:  # a Q, K or V that is not a plain zipped layer after all: that block is not tied
        return trace(graph, layers, untied | set(lost))
    groups, layout = _grouped(ties, hidden, followers, layout)
    normalized = {i for i, layer in enumerate(layers) if i in hidden and _feeds_normalization(graph, layer, layout)}
    return Spaces(layout, hidden, groups, followers, restore, private, plain, normalized, tied, untied)


def _layer_space(node: gs.Node, layer, index: int) -> ChannelSpace:
    """A hidden layer's output space: its neurons on the layer axis (an embedding's on its output's last axis)."""
    out = node.outputs[0]
    axis = len(out.shape) - 1 if layer.kind == "embedding" and out.shape else LAYER_AXIS
    return ChannelSpace((Segment(index, layer.neurons),), 1, axis)


def _core_exit(node: gs.Node, h: TiedHeads, layers: list, layout: dict[str, ChannelSpace]) -> None:
    """A node of a tied core: where it makes the core's exit, the exit carries V's channels (last axis)."""
    for t in node.outputs:
        if t.name == h.exit:
            layout[t.name] = ChannelSpace(layout[layers[h.v].output].segments, 1, len(t.shape) - 1)


def _still_tied(h: TiedHeads, hidden: list[int], layers: list, layout: dict[str, ChannelSpace]) -> bool:
    """Whether a tied block's Q, K and V all stayed hidden layers whose outputs carry their own neurons."""
    return all(i in hidden and getattr(layout.get(layers[i].output), "segments", None) ==
               (Segment(i, h.heads * h.width),) for i in (h.q, h.k, h.v))


def _grouped(ties: _UnionFind, hidden: list[int], followers: list[int], layout: dict[str, ChannelSpace]
             ) -> tuple[list[list[int]], dict[str, ChannelSpace]]:
    """The matching groups (tied hidden layers, followers apart, ordered by their first member) and
    the layout with every segment named by its group's first member."""
    members: dict[int, list[int]] = {}
    for i in hidden:
        if i not in followers:
            members.setdefault(ties.find(i), []).append(i)
    groups = [m for _, m in sorted(members.items(), key=lambda kv: kv[1][0])]
    layout = {k: ChannelSpace(tuple(Segment(s.layer if s.layer < 0 else _root_member(ties, s.layer, members), s.count)
                                    for s in v.segments), v.block, v.axis) for k, v in layout.items()}
    return groups, layout


def _feeds_normalization(graph: gs.Graph, layer, layout: dict[str, ChannelSpace]) -> bool:
    """Whether ``layer``'s output is read directly by a per-sample normalization over its channels
    (LayerNormalization, or the reduction over channels that starts a decomposed one)."""
    out = next(n for n in graph.nodes if n.name == layer.name).outputs[0]
    if out.name not in layout:
        return False
    space = layout[out.name]
    return any(c.op in ("LayerNormalization", "ReduceMean") and
               channel_rule(c, 0, space.channels, space.axis) in ("normalize", "reduce") for c in out.outputs)


def _root_member(ties: _UnionFind, layer: int, members: dict[int, list[int]]) -> int:
    """Segments name a group by its first member (stable across the union-find's roots)."""
    return members.get(ties.find(layer), [layer])[0]


def _join(node: gs.Node, layout: dict[str, ChannelSpace], ties: _UnionFind, slot: int) -> str:
    """An elementwise op of several non-constant inputs, or a Concat along another axis than the
    channels': tie their channels segment by segment. Returns ``"binary"`` or ``"stack"``.

    An unzipped operand either holds no channels (it broadcasts: a per-sample mean) or all of them
    in task order (an embedding, a class token): the latter is sliced per part when emitted. Joins
    that cannot be tied (segments of different kinds or sizes, channels on different axes) restore
    their inputs to task order instead.
    """
    zipped = node.inputs[slot]
    space = layout[zipped.name]
    rank = len(zipped.shape) if zipped.shape is not None else 0
    stack = node.op == "Concat"
    others = [t for t in node.inputs if not isinstance(t, gs.Constant) and t.name not in layout]
    for t in others:
        if stack or not broadcasts_channels(t, rank, space.axis):
            if t.shape is None or len(t.shape) != rank or t.shape[space.axis] != space.channels * space.block:
                return "restore"  # an unzipped operand with channels of its own, but not these
    spaces = [layout[t.name] for t in node.inputs if t.name in layout]
    ref = spaces[0]
    if any(s.block != ref.block or s.axis != ref.axis or len(s.segments) != len(ref.segments) for s in spaces) or \
            any(t.shape is None or len(t.shape) != rank for t in node.inputs if t.name in layout):
        return "restore"  # (operands of other ranks broadcast from the right: (1, C, 1) + (1, C) mixes channels)
    if stack and any(isinstance(t, gs.Constant) for t in node.inputs):
        return "restore"
    for s in spaces[1:]:
        for a, b in zip(s.segments, ref.segments):
            if a.count != b.count or (a.layer < 0 or b.layer < 0) and a.layer != b.layer:
                return "restore"
    for s in spaces[1:]:
        for a, b in zip(s.segments, ref.segments):
            if a.layer >= 0:
                ties.union(a.layer, b.layer)
    return "stack" if stack else "binary"


def _concat(node: gs.Node, layout: dict[str, ChannelSpace], private: set[str], axis: int = 1) -> str:
    """Concat along channels: the output space is the inputs' segments in order."""
    segments, block = [], None
    for t in node.inputs:
        s = layout.get(t.name)
        if s is None:
            if t.shape is None or not isinstance(t.shape[axis], int):
                return "restore"
            s = ChannelSpace((Segment(PRIVATE if t.name in private else ALIGNED, t.shape[axis]),), 1, axis)
        if block not in (None, s.block) or s.axis != axis:
            return "restore"
        block = s.block
        segments.extend(s.segments)
    layout[node.outputs[0].name] = ChannelSpace(tuple(segments), block or 1, axis)
    return "concat"


def _reaches_layer(graph: gs.Graph, layer, by_node: dict[str, int]) -> bool:
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


def check_supported(graph: gs.Graph) -> None:
    """Ops onnxzip cannot replay at all: subgraphs (If/Loop/Scan)."""
    for node in graph.nodes:
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            raise UnsupportedOpError(f"node {node.name!r} ({node.op}) holds a subgraph; onnxzip cannot zip "
                                     "control flow")
