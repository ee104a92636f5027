"""Attention blocks found from the graph's pattern: scores = MatMul(Q, K'), Softmax, MatMul(P, V).

Each block names the layers that project Q, K and V (one layer for a fused projection) and the
output projection that reads the heads' result. onnxzip zips these layers like any other and
restores their outputs to each task's channel order before the heads are split (heads are not
tied); the blocks are what ``onnxzip inspect`` and the report show.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from .ir import ModelIR

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
    layers = {layer.name: i for i, layer in enumerate(ir.layers)}
    blocks = []
    for node in ir.graph.nodes:
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


def describe_blocks(ir: ModelIR, blocks: list[AttentionBlock]) -> list[str]:
    names = [layer.name for layer in ir.layers]
    out = []
    for b in blocks:
        qkv = names[b.q] + " (fused Q/K/V)" if b.q == b.k == b.v else \
            f"Q {names[b.q]}, K {names[b.k]}, V {names[b.v]}"
        out.append(qkv + (f" -> output {names[b.out]}" if b.out is not None else ""))
    return out
