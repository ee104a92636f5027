"""Per-channel constants of a traced graph: the constants that ops apply channel by channel to a
zipped tensor (a position embedding added, a LayerNorm's scale and bias, a BatchNorm kept in the
graph, a class token joined to the tokens). :mod:`onnxzip.sharing.constants` merges them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from .spaces import ChannelSpace, broadcasts_channels, channel_dim, channel_rule

if TYPE_CHECKING:
    from .ir import ModelIR


@dataclass(frozen=True)
class ChannelConstant:
    """A constant applied per channel: node ``node`` (a position in the graph's node list, the same
    in every task), its input ``slot`` (a Constant, or an Expand of one: a class token), the axis of
    the constant that holds the channels, and the space of the tensor it applies to."""

    node: int
    slot: int
    axis: int
    space: ChannelSpace
    name: str  # the node's name in the task it was read from
    readers: tuple[str, ...]  # the nodes that read the constant (the node, and the Expand of a class token)


def channel_constants(ir: ModelIR) -> list[ChannelConstant]:
    """Every per-channel constant of the task's graph that acts on a zipped tensor (positions and
    slots are the same in every aligned task)."""
    out = []
    layout = ir.spaces.layout
    cores = ir.spaces.cores()
    for i, node in enumerate(ir.graph.nodes):
        zipped = [j for j, t in enumerate(node.inputs) if t.name in layout]
        if not zipped or node.name in cores or node.name in ir.spaces.restore:
            continue
        space = layout[node.inputs[zipped[0]].name]
        rule = channel_rule(node, zipped[0], space.channels, space.axis)
        rank = len(node.inputs[zipped[0]].shape or ())
        if rule not in ("binary", "affine", "normalize", "stack") or not rank:
            continue
        width = space.channels * space.block
        for j, t in enumerate(node.inputs):
            c = _constant_of(t)
            if j in zipped or c is None:
                continue
            r = 2 if rule == "affine" else rank
            if rule != "affine" and not isinstance(t, gs.Constant) and broadcasts_channels(t, rank, space.axis):
                continue
            if channel_dim(c, r, space.axis if rule != "affine" else 1) == width:
                readers = (node.name,) if isinstance(t, gs.Constant) else (node.name, t.inputs[0].name)
                out.append(ChannelConstant(i, j, c.ndim - (r - (space.axis if rule != "affine" else 1)), space,
                                           node.name, readers))
    return out


def _constant_of(t: gs.Tensor) -> np.ndarray | None:
    """A Constant's values, or those of the Constant an Expand spreads over the batch (a class
    token: the expanded tensor holds the constant's channels on the same trailing axes)."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    if t.inputs and t.inputs[0].op == "Expand" and isinstance(t.inputs[0].inputs[0], gs.Constant):
        return np.asarray(t.inputs[0].inputs[0].values)
    return None


def constant_value(ir: ModelIR, c: ChannelConstant) -> tuple[str, np.ndarray]:
    """The name and values of the Constant that ``c`` names in task ``ir``."""
    t = ir.graph.nodes[c.node].inputs[c.slot]
    x = t if isinstance(t, gs.Constant) else t.inputs[0].inputs[0]
    return x.name, np.asarray(x.values)
