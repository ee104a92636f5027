"""Ops that keep channels, replayed part by part: each part of a zipped input gets its own op, per-channel
constants sliced to the part's channels, unzipped operands of a join cut to them, shape inputs
(Reshape, Resize) given the part's size."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from ..graph.axes import reshape_keeps_prefix
from ..graph.spaces import ChannelSpace, broadcasts_channels, channel_dim
from ..sharing.layout import expand_channels
from .builder import Part, Value, node_attrs

if TYPE_CHECKING:
    from .task import TaskEmitter


def _part_const(em: TaskEmitter, c: np.ndarray, rank: int, part: Part, space: ChannelSpace) -> str:
    """A per-channel constant sliced to ``part``'s channels (unchanged if it broadcasts)."""
    dim = channel_dim(c, rank, space.axis)
    if dim in (None, 1):
        return em.b.const(c, f"{em.prefix}/const")
    axis = c.ndim - (rank - space.axis)
    idx = expand_channels(part.channels, space.block) if dim == space.channels * space.block else part.channels
    return em.b.const(np.take(c, idx, axis=axis), f"{em.prefix}/const")



def emit_per_part(em: TaskEmitter, node: gs.Node, zipped: list[int], rule: str) -> None:
    lead = em.values[node.inputs[zipped[0]].name]
    joins = {i: em.values[t.name].parts for i, t in enumerate(node.inputs)
             if i != zipped[0] and t.name in em.ir.spaces.layout}
    for parts in joins.values():
        if [list(p.channels) for p in parts] != [list(p.channels) for p in lead.parts]:
            raise AssertionError(f"node {node.name}: joined tensors are zipped differently")
    out_t = node.outputs[0]
    rank = len(node.inputs[zipped[0]].shape or ())
    parts = []
    for n, part in enumerate(lead.parts):
        inputs = []
        for j, t in enumerate(node.inputs):
            if j == zipped[0]:
                inputs.append(part.tensor)
            elif j in joins:
                inputs.append(joins[j][n].tensor)
            elif isinstance(t, gs.Constant) and rule in ("binary", "affine"):
                c = np.asarray(em.constants.get(t.name, t.values))
                inputs.append(_part_const(em, c, rank if rule == "binary" else 2, part, lead.space))
            elif isinstance(t, gs.Constant) and rule == "keep":
                inputs.append(em.b.const(_keep_const(node, j, np.asarray(t.values), part, lead.space, rank),
                                           f"{em.prefix}/{t.name}"))
            elif rule == "keep" and node.op == "Reshape" and j == 1:
                inputs.append(_part_target(em, t, part, lead.space))
            elif rule in ("binary", "stack") and not isinstance(t, gs.Constant) and t.name and \
                    not broadcasts_channels(t, rank, lead.space.axis):
                inputs.append(_slice(em, t, rank, part, lead.space))
            else:
                inputs.append(em.tensor(t))
        shared = part.shared and all(joins[j][n].shared for j in joins) and all(
            i in em.b.shared or i == "" for j, i in enumerate(inputs) if j != zipped[0] and j not in joins)
        hint = f"{out_t.name}.{'s' if shared else 'p'}{n}"
        (name,) = em.b.node(node.op, inputs, node_attrs(node), [hint], em.prefix, node.domain)
        parts.append(Part(name, part.channels, shared))
    em.values[out_t.name] = Value(parts, em.ir.spaces.layout.get(out_t.name, lead.space))

def _part_target(em: TaskEmitter, t: gs.Tensor, part: Part, space: ChannelSpace) -> str:
    """A Reshape target computed as Concat(leading dims..., [C]) for one part: its own count last
    (a -1 there serves every part as it is; see axes._reshaped_axis)."""
    maker = t.inputs[0]
    last = np.asarray(maker.inputs[-1].values).reshape(-1).copy()
    if last[-1] == -1:
        return em.tensor(t)
    last[-1] = len(part.channels) * space.block
    lead = [em.tensor(x) for x in maker.inputs[:-1]]
    return em.b.node("Concat", lead + [em.b.const(last, f"{em.prefix}/{t.name}.count")], {"axis": 0},
                       [f"{t.name}.part"], em.prefix)[0]

def _slice(em: TaskEmitter, t: gs.Tensor, rank: int, part: Part, space: ChannelSpace) -> str:
    """An unzipped operand of a join (all channels, task order) cut to ``part``'s channels; a
    constant spread by an Expand (a class token) as the part's constant spread (the same op in every
    task where the constants are merged: :mod:`onnxzip.sharing.constants`)."""
    axis = len(t.shape) - (rank - space.axis)
    channels = expand_channels(part.channels, space.block)
    maker = t.inputs[0] if t.inputs else None
    if maker is not None and maker.op == "Expand" and isinstance(maker.inputs[0], gs.Constant) and \
            maker.inputs[0].values.ndim == rank:
        c = np.asarray(em.constants.get(maker.inputs[0].name, maker.inputs[0].values))
        piece = em.b.const(np.take(c, channels, axis=axis), f"{em.prefix}/{maker.inputs[0].name}.part")
        keep = np.ones(rank, np.int64)
        keep[axis] = 0
        target = em.b.node("Mul", [em.tensor(maker.inputs[1]), em.b.const(keep, f"{em.prefix}/keep")], {},
                           [f"{t.name}.target"], em.prefix)[0]  # (the channel entry set to 1: the piece's own)
        target = em.b.node("Add", [target, em.b.const(1 - keep, f"{em.prefix}/one")], {}, [f"{t.name}.target"],
                           em.prefix)[0]
        return em.b.node("Expand", [piece, target], {}, [f"{t.name}.part"], em.prefix)[0]
    idx = em.b.const(channels.astype(np.int64), f"{em.prefix}/{t.name}.idx")
    return em.b.node("Gather", [em.tensor(t), idx], {"axis": axis}, [f"{t.name}.part"], em.prefix)[0]


def _keep_const(node: gs.Node, slot: int, c: np.ndarray, part: Part, space: ChannelSpace, rank: int) -> np.ndarray:
    """Shape inputs of ops that keep the channel axis, for one part (Reshape/Resize sizes name it)."""
    if node.op == "Reshape" and slot == 1:
        c = c.copy()
        if space.axis == 1 and reshape_keeps_prefix(node, rank):
            c[1] = 0 if not int(node.attrs.get("allowzero", 0)) else len(part.channels) * space.block
        else:  # the channel axis and the ones after it keep their sizes: its entry comes first of them
            c[c.size - (rank - space.axis)] = len(part.channels) * space.block
    elif node.op == "Resize" and slot == 3 and c.size:
        c = c.copy()
        c[1] = len(part.channels)
    return c
