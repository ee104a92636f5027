"""A tied attention core replayed for one task: its nodes as they are, on the task's zipped Q, K and
V joined (:mod:`onnxzip.graph.attention`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import onnx_graphsurgeon as gs

from ..graph.attention import TiedHeads
from .builder import Part, Value, node_attrs

if TYPE_CHECKING:
    from .task import TaskEmitter


def emit_core(em: TaskEmitter, node: gs.Node, heads: TiedHeads) -> None:
    """A node of a tied attention core, replayed on the task's zipped Q, K and V joined (whole
    heads, Q and K in one order); the core's exit is in V's zipped order, cut back into V's parts."""
    inputs, shared = [], True
    for t in node.inputs:
        value = None if isinstance(t, gs.Constant) or not t.name else em.values[t.name]
        if value is not None and value.space is not None:
            x, same = em.joined(t.name)
        else:
            x, same = em.tensor(t), value is None or all(p.shared for p in value.parts)
        inputs.append(x)
        shared = shared and same
    outs = em.b.node(node.op, inputs, node_attrs(node), [t.name for t in node.outputs], em.prefix, node.domain)
    for t, name in zip(node.outputs, outs):
        if t.name != heads.exit:
            em.values[t.name] = Value([Part(name, None, shared)], None)
            continue
        v = em.values[em.ir.layers[heads.v].output]
        space = em.ir.spaces.layout[t.name]
        names = [f"{t.name}.{'s' if p.shared else 'p'}{n}" for n, p in enumerate(v.parts)]
        pieces = em.split(name, [len(p.channels) for p in v.parts], space.axis, names)
        em.values[t.name] = Value([Part(o, p.channels, p.shared) for o, p in zip(pieces, v.parts)], space)
