"""Per-channel constants of a fully shared stream, merged: what lets a shared stream be computed once.

Ops that apply a constant per channel to a zipped tensor (a position embedding added, a LayerNorm's
scale and bias, a BatchNorm kept in the graph, a class token joined to the tokens) keep each task's
own values, in each task's channel order. Where every channel of the tensor is shared (every group
in its space shares all of its neurons) and the tasks share their inputs, those per-task values are
all that keeps the tasks' tensors apart: merged (the mean over the tasks, slot by slot), the tasks'
ops are the same and the zipped graph computes the stream once (:mod:`onnxzip.emit.builder` builds
identical nodes once). They are merged when the group's matching is decided, before the stages
downstream run, so every later statistic and merge sees them.
"""
from __future__ import annotations

import numpy as np

from ..graph.constants import channel_constants, constant_value
from ..graph.ir import ModelIR
from ..graph.spaces import ALIGNED, ChannelSpace
from .layout import Matchings, expand_channels


def fully_shared(space: ChannelSpace, m: Matchings, sizes: dict[int, int]) -> bool:
    """Whether every channel of ``space`` is a shared slot (ALIGNED input channels count as shared)."""
    return all(s.layer == ALIGNED or s.layer >= 0 and m.k[m.group_of[s.layer]] == sizes[m.group_of[s.layer]]
               for s in space.segments)


def merge_constants(irs: list[ModelIR], m: Matchings, g: int, constants: list[dict[str, np.ndarray]],
                    unrun: set[str]) -> set[str]:
    """Merge, in ``constants`` (per task: name -> value in the task's order), the per-channel
    constants of fully shared tensors whose space holds group ``g`` (just decided), where the nodes
    that read them (``c.readers``) are among ``unrun`` (the first task's nodes not run yet). Returns
    the names (in the first task) of the nodes whose constants were merged."""
    sizes = {h: irs[0].layers[members[0]].neurons for h, members in enumerate(m.groups)}
    merged = set()
    for c in channel_constants(irs[0]):
        space = c.space
        if not any(s.layer >= 0 and m.group_of[s.layer] == g for s in space.segments) or \
                not fully_shared(space, m, sizes) or \
                any(s.layer >= 0 and m.group_of[s.layer] not in m.rows for s in space.segments) or \
                not set(c.readers) <= unrun:
            continue
        positions = [_positions(space, m, t) for t in range(len(irs))]
        tensors = [constant_value(ir, c) for ir in irs]
        values = [np.asarray(constants[t].get(name, x), np.float64) for t, (name, x) in enumerate(tensors)]
        if any(v.shape != values[0].shape for v in values):
            continue
        mean = sum(np.take(v, p, axis=c.axis) for v, p in zip(values, positions)) / len(values)
        for t, ((name, x), v, p) in enumerate(zip(tensors, values, positions)):
            out = v.copy()
            index = [slice(None)] * out.ndim
            index[c.axis] = p
            out[tuple(index)] = mean
            constants[t][name] = out.astype(x.dtype)
        merged.add(c.name)
    return merged


def _positions(space: ChannelSpace, m: Matchings, t: int) -> np.ndarray:
    """Task ``t``'s position (along the tensor's channel axis) of every slot of ``space``, in slot
    order (all slots shared)."""
    out, offset = [], 0
    for s in space.segments:
        out.append(offset + (np.arange(s.count) if s.layer < 0 else m.rows[m.group_of[s.layer]][t]))
        offset += s.count
    return expand_channels(np.concatenate(out), space.block)
