"""Attention blocks found from the graph's pattern: scores = MatMul(Q, K'), Softmax, MatMul(P, V).

Each block names the layers that project Q, K and V (one layer for a fused projection) and the
output projection that reads the heads' result.

Where Q, K and V are three layers and the ops between them and the output projection (the *core*:
head split, scores, softmax, weighted sum, head merge) treat every head alike, the block's heads are
*tied* (:class:`TiedHeads`): Q, K and V share one matching that moves whole heads and keeps Q's and
K's channels within a head in one order (the scores are dot products within a head), so each task
runs the core on its Q, K and V as zipped, and the result is in V's zipped order. The structure is
read from the graph here; :mod:`onnxzip.check.heads` proves it on calibration samples (the model with
Q, K and V permuted by whole heads, and the output projection's columns to match, must compute the
same), and a block that fails is untied: its core then reads each task's own channel order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx_graphsurgeon as gs

if TYPE_CHECKING:
    from .ir import Layer, ModelIR

#: ops that move or scale a projection's output on its way into (or out of) the attention product
PASS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Gather", "Slice", "Split", "Mul", "Div", "Add",
                  "Cast", "Identity", "Flatten", "Concat"})


@dataclass(frozen=True)
class AttentionBlock:
    """Layer indices (into ``ModelIR.layers``); ``q == k == v`` for a fused projection; ``out`` is
    None where no layer reads the result before other ops."""

    q: int
    k: int
    v: int
    out: int | None


def _producer_layer(t: gs.Tensor, layers: dict[str, int], depth: int = 0) -> int | None:
    """The layer whose output reaches ``t`` through pass-through ops only (the first non-constant
    input that leads to one: ``Mul(gate, q)`` and ``Mul(q, gate)`` alike)."""
    if depth > 24 or not t.inputs:
        return None
    node = t.inputs[0]
    if node.name in layers:
        return layers[node.name]
    if node.op not in PASS:
        return None
    for x in node.inputs:
        if not isinstance(x, gs.Constant) and x.name:
            found = _producer_layer(x, layers, depth + 1)
            if found is not None:
                return found
    return None


def _consumer_layer(t: gs.Tensor, layers: dict[str, int], depth: int = 0) -> int | None:
    """The first layer that ``t`` reaches through pass-through ops only."""
    if depth > 24:
        return None
    for node in t.outputs:
        if node.name in layers:
            return layers[node.name]
        if node.op in PASS - {"Add"}:
            found = _consumer_layer(node.outputs[0], layers, depth + 1)
            if found is not None:
                return found
    return None


def find_attention(ir: ModelIR) -> list[AttentionBlock]:
    """Every Softmax between MatMul(Q, K') and MatMul(P, V) whose operands come from layers."""
    return attention_blocks(ir.graph, ir.layers)


def attention_blocks(graph: gs.Graph, layer_list: list[Layer]) -> list[AttentionBlock]:
    """:func:`find_attention` on a graph and its layers."""
    layers = {layer.name: i for i, layer in enumerate(layer_list)}
    nodes = {n.name: n for n in graph.nodes}
    blocks = []
    for node in graph.nodes:
        if node.op != "Softmax":
            continue
        score = _through(node.inputs[0])
        if score is None or len(score.inputs) < 2 or any(isinstance(x, gs.Constant) for x in score.inputs[:2]):
            continue
        probs = node.outputs[0]
        while len(probs.outputs) == 1 and probs.outputs[0].op in ("Cast", "Dropout", "Identity"):
            probs = probs.outputs[0].outputs[0]
        after = [c for c in probs.outputs if c.op == "MatMul" and c.inputs[0] is probs]
        if not after:
            continue
        q, k = (_producer_layer(x, layers) for x in score.inputs[:2])
        v = _producer_layer(after[0].inputs[1], layers)
        if q is None or k is None or v is None:
            continue
        if q == k == v:  # a fused projection split in three (normalization): its three layers
            q, k, v = _joined(nodes[layer_list[q].name], layers) or (q, k, v)
        blocks.append(AttentionBlock(q, k, v, _consumer_layer(after[0].outputs[0], layers)))
    return blocks


def _through(t: gs.Tensor, depth: int = 0) -> gs.Node | None:
    """The MatMul of two computed operands that makes the scores ``t`` (through scaling, masking
    (Where's value inputs) and casts)."""
    if depth > 8 or not t.inputs:
        return None
    node = t.inputs[0]
    if node.op == "MatMul":
        return node if not any(isinstance(x, gs.Constant) for x in node.inputs[:2]) else None
    if node.op not in ("Mul", "Div", "Add", "Sub", "Where", "Cast"):
        return None
    for x in node.inputs[1:] if node.op == "Where" else node.inputs:
        if not isinstance(x, gs.Constant) and x.inputs:
            found = _through(x, depth + 1)
            if found is not None:
                return found
    return None


def describe_blocks(ir: ModelIR, blocks: list[AttentionBlock], ties: bool = False) -> list[str]:
    """One line per block; with ``ties``, whether its heads are tied (heads x width) or restored."""
    names = [layer.name for layer in ir.layers]
    tied = {h.q: h for h in ir.spaces.heads}
    out = []
    for b in blocks:
        qkv = names[b.q] + " (fused Q/K/V)" if b.q == b.k == b.v else \
            f"Q {names[b.q]}, K {names[b.k]}, V {names[b.v]}"
        h = tied.get(b.q)
        how = "" if not ties else f"; heads tied ({h.heads} x {h.width})" if h is not None else \
            "; heads restored to each task's order"
        out.append(qkv + (f" -> output {names[b.out]}" if b.out is not None else "") + how)
    return out


#: ops a tied core may hold: shape ops, the score and weighted-sum products, their scaling and
#: masking, the softmax, and the shape arithmetic of run-time Reshape targets
CORE_OPS = frozenset({"Reshape", "Transpose", "MatMul", "Mul", "Div", "Add", "Sub", "Where", "Softmax", "Cast",
                      "Dropout", "Identity", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Split", "Slice",
                      "Sqrt", "Expand", "Flatten"})


@dataclass(frozen=True)
class TiedHeads:
    """An attention block whose heads are tied: layers ``q``, ``k``, ``v`` (indices into the
    layers; one matching of ``heads`` x ``width`` neurons each, moved by whole heads), the ``core``
    nodes between their outputs and ``exit`` (the output projection's input tensor, in V's channel
    order), replayed as they are on each task's zipped Q, K and V."""

    q: int
    k: int
    v: int
    out: int
    heads: int
    width: int  # channels per head
    core: frozenset[str]
    exit: str


def core_nodes(heads: list[TiedHeads]) -> dict[str, TiedHeads]:
    """Node name -> the tied block whose core it is in."""
    return {name: h for h in heads for name in h.core}


def tied_heads(graph: gs.Graph, layers: list[Layer], hidden: list[int], untied: frozenset[str] = frozenset()
               ) -> list[TiedHeads]:
    """The attention blocks whose heads can be tied (three distinct hidden Q, K, V layers of one
    width, an output projection, a core of :data:`CORE_OPS` whose tensors nothing else reads but a
    Shape, and a head width found in the core's head split), less those whose Q layer is named in
    ``untied`` (a check on samples failed them)."""
    out = []
    nodes = {n.name: n for n in graph.nodes}
    outputs = {t.name for t in graph.outputs}
    for b in attention_blocks(graph, layers):
        q, k, v = b.q, b.k, b.v
        if len({q, k, v}) < 3 or b.out is None or not {q, k, v} <= set(hidden) or layers[q].name in untied:
            continue
        width = {layers[i].neurons for i in (q, k, v)}
        if len(width) != 1:
            continue
        d = width.pop()
        starts = [nodes[layers[i].name].outputs[0] for i in (q, k, v)]
        exit_ = nodes[layers[b.out].name].inputs[0]
        core = _between(starts, exit_)
        if core is None or any(nodes[n].op not in CORE_OPS for n in core) or \
                any(layers[i].name in core for i in range(len(layers))):
            continue
        w = _head_width(core, nodes, d)
        if w is None or not exit_.shape or isinstance(exit_.shape[-1], int) and exit_.shape[-1] != d or \
                not all(_used_within(nodes[n], core, exit_, outputs) for n in core):
            continue
        out.append(TiedHeads(q, k, v, b.out, d // w, w, frozenset(core), exit_.name))
    return out


def _joined(node: gs.Node, layers: dict[str, int]) -> tuple[int, int, int] | None:
    """The three layers a Concat joins ``node``'s output with (a fused projection split in three:
    :func:`onnxzip.graph.normalize.split_fused_projections`), in the Concat's order."""
    for c in node.outputs[0].outputs:
        if c.op == "Concat" and len(c.inputs) == 3 and all(t.inputs and t.inputs[0].name in layers for t in c.inputs):
            q, k, v = (layers[t.inputs[0].name] for t in c.inputs)
            return q, k, v
    return None


def _between(starts: list[gs.Tensor], end: gs.Tensor) -> set[str] | None:
    """The names of the nodes on a path from one of ``starts`` to ``end`` (None if none is)."""
    ahead: set[str] = set()
    todo = list(starts)
    while todo:
        for node in todo.pop().outputs:
            if node.name not in ahead:
                ahead.add(node.name)
                todo.extend(node.outputs)
    behind: set[str] = set()
    todo = [end]
    while todo:
        t = todo.pop()
        for node in t.inputs:
            if node.name not in behind:
                behind.add(node.name)
                todo.extend(x for x in node.inputs if not isinstance(x, gs.Constant))
    core = ahead & behind
    return core or None


def _head_width(core: set[str], nodes: dict[str, gs.Node], d: int) -> int | None:
    """The channels per head: the last dimension of Q as the scores' MatMul reads it (every score
    MatMul of the core agreeing; None if not known or not a proper divisor of ``d``)."""
    widths = set()
    for name in core:
        node = nodes[name]
        if node.op == "MatMul" and any(c.op == "Softmax" or _reaches_softmax(c) for c in node.outputs[0].outputs):
            q = node.inputs[0]
            widths.add(q.shape[-1] if q.shape else None)
    if len(widths) != 1:
        return None
    w = widths.pop()
    return w if isinstance(w, int) and 0 < w < d and d % w == 0 else None


def _reaches_softmax(node: gs.Node, depth: int = 0) -> bool:
    """Whether ``node`` (scaling, masking, casts of the scores) leads to a Softmax."""
    if depth > 8 or node.op not in ("Mul", "Div", "Add", "Sub", "Where", "Cast"):
        return False
    return any(c.op == "Softmax" or _reaches_softmax(c, depth + 1) for c in node.outputs[0].outputs)


def _used_within(node: gs.Node, core: set[str], exit_: gs.Tensor, outputs: set[str]) -> bool:
    """Whether ``node``'s outputs (but the exit) are read only inside the core, or by a Shape."""
    return all(t is exit_ or t.name not in outputs and all(c.name in core or c.op == "Shape" for c in t.outputs)
               for t in node.outputs)
