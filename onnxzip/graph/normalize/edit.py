"""Small graph edits the passes share: Identity/Dropout removal, bypassing a node, replacing a tensor."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...errors import UnsupportedOpError


def remove_identities(graph: gs.Graph) -> int:
    """Remove Identity and inference-mode Dropout nodes, rewiring their consumers."""
    n = 0
    for node in list(graph.nodes):
        if node.op not in ("Identity", "Dropout"):
            continue
        if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs:
            raise UnsupportedOpError(f"node {node.name!r} (Dropout): its mask output is used")
        if node.op == "Dropout" and len(node.inputs) > 2 and _truthy(node.inputs[2]):
            raise UnsupportedOpError(f"node {node.name!r} (Dropout): training_mode is on")
        if bypass(graph, node):
            n += 1
    return n


def set_links(items: list, new: list) -> None:
    """Replace a graphsurgeon node's inputs/outputs (its lists keep tensor links in sync)."""
    new = list(new)
    items.clear()
    items.extend(new)


def _truthy(t: gs.Tensor) -> bool:
    return isinstance(t, gs.Constant) and bool(np.asarray(t.values).any())


def bypass(graph: gs.Graph, node: gs.Node) -> bool:
    """Remove a node whose first output equals its first input. False where a graph output blocks it."""
    src, dst = node.inputs[0], node.outputs[0]
    if dst in graph.outputs:
        if src in graph.inputs or src in graph.outputs or isinstance(src, gs.Constant) or not src.inputs:
            return False
        producer = src.inputs[0]
        node.inputs.clear()
        node.outputs.clear()
        replace_tensor(graph, src, dst)
        producer.outputs[producer.outputs.index(src)] = dst
    else:
        node.inputs.clear()
        node.outputs.clear()
        replace_tensor(graph, dst, src)
    return True


def replace_tensor(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Point every consumer of ``old`` at ``new``."""
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new
    graph.outputs = [new if t is old else t for t in graph.outputs]
