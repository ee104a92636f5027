"""The one owner of the zipped order of a layer's rows and columns.

A layer of ``n`` neurons and fan-in ``d`` is handled as an (n, d + 1) matrix with the bias as the
last column (ONNX order: channel-major, kernel offsets inner). Zipped order puts the rows of each
group's shared slots first (:class:`Matchings`: per task, its neuron of each slot) and the columns
as ``[shared inputs, bias | private inputs]``, the first ``ns`` being the ones stored once. The
emitted graph lists a layer's row blocks in :func:`row_blocks`' order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InternalError
from ..graph.ir import Layer, ModelIR
from ..graph.spaces import ALIGNED, PRIVATE
from ..report.records import GroupChoice
from .plan import LayerZip


def as_matrix(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(W of shape (n, ...), b (n,)) -> (n, fan_in + 1) float64 with the bias last."""
    return np.concatenate([w.reshape(w.shape[0], -1), b[:, None]], axis=1).astype(np.float64)


def from_matrix(m: np.ndarray, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`as_matrix` for ``layer``'s weight shape."""
    return m[:, :-1].reshape((m.shape[0],) + layer.shape[1:]), m[:, -1]


def expand_channels(channels: np.ndarray, per_channel: int) -> np.ndarray:
    """Channel ids -> the ids of their features/columns (``per_channel`` consecutive ones each)."""
    return (np.asarray(channels, np.int64)[:, None] * per_channel + np.arange(per_channel)).reshape(-1)


def effective(z: LayerZip, task: int, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """A task's zipped layer in original order: (W, b) as the ONNX initializers hold them, float32
    (what the stage graphs run; the loop keeps them for the layer's stage only)."""
    full = np.empty(z.weights[task].shape, np.float32)
    full[np.ix_(z.rows[task], z.cols[task])] = z.weights[task]
    return from_matrix(full, layer)


def channel_order(order: np.ndarray, ns: int, kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """A conv's zipped column order (shared columns, bias, private columns) -> its shared and
    private channels, each channel's ``kernel`` offsets being consecutive columns."""
    shared, private = order[:ns - 1], order[ns:]
    sc, pc = shared[::kernel] // kernel, private[::kernel] // kernel
    if not (np.array_equal(expand_channels(sc, kernel), shared) and np.array_equal(expand_channels(pc, kernel), private)
            and order[ns - 1] == order.size - 1):
        raise InternalError("a conv's zipped columns do not keep each channel's kernel offsets together")
    return sc, pc


def input_segments(ir: ModelIR, layer: Layer, group_of: dict[int, int]) -> list[tuple[int, int, int]]:
    """The blocks of ``layer``'s input channels: (the group whose neurons they are, or ALIGNED
    (common to the tasks) or PRIVATE (each task's own); channels; weight columns per channel)."""
    spaces = ir.spaces
    if layer.input in spaces.private:
        return [(PRIVATE, layer.fan_in, 1)]
    space = spaces.layout.get(layer.input)
    if space is None:
        return [(ALIGNED, layer.fan_in, 1)]
    per_channel = space.block * layer.kernel
    return [(seg.layer if seg.layer < 0 else group_of[seg.layer], seg.count, per_channel) for seg in space.segments]


def row_blocks(shared: int, neurons: int, task: int) -> list[tuple[np.ndarray, bool]]:
    """The zipped rows of a layer as the emitted graph lists them: (rows, whether shared) blocks.
    The first task lists its private rows first and the others their shared rows first, so that
    with two tasks on a shared input each task's channels of a stacked layer are one contiguous
    run (:mod:`onnxzip.emit.fuse` slices them)."""
    blocks = [(np.arange(shared), True), (np.arange(shared, neurons), False)]
    return blocks[::-1] if task == 0 else blocks


def whole_units(counts: list[int], units: list[int], up: bool = False) -> list[int]:
    """Each group's shared count rounded to whole units (a tied attention head's width): to the
    nearest, halves up, or (``up``) to the next whole unit."""
    return [int(np.ceil(k / u) if up else np.floor(k / u + 0.5)) * u for k, u in zip(counts, units)]


def group_name(ir: ModelIR, members: list[int]) -> str:
    """A group's layer names, for messages and listings."""
    return "+".join(ir.layers[i].name for i in members)


@dataclass
class Matchings:
    """Each group's choice: per task, the task's neuron at every slot (the ``k`` shared slots first).

    Filled group by group as the layer loop (or the budget's pass) decides them; a layer's columns
    can be ordered once every group feeding it is decided (:meth:`decided`).
    """

    groups: list[list[int]]  # layer indices tied into one matching
    k: list[int]  # per group, the slots to share (rounded to whole units)
    rows: dict[int, list[np.ndarray]] = field(default_factory=dict)  # group -> per task (n,) neuron order
    slot_costs: dict[int, np.ndarray] = field(default_factory=dict)  # group -> each shared slot's cost, ascending
    orders: dict[int, GroupChoice] = field(default_factory=dict)  # group -> the task order chosen, what it cost
    units: list[int] | None = None  # per group, the neurons that move together (a tied head's width; 1)

    def __post_init__(self) -> None:
        self.group_of = {i: g for g, members in enumerate(self.groups) for i in members}
        self.units = self.units or [1] * len(self.groups)
        self.k = whole_units(self.k, self.units)

    def decided(self, ir: ModelIR, li: int) -> bool:
        """Whether every group feeding layer ``li`` has its matching."""
        space = ir.spaces.layout.get(ir.layers[li].input)
        return space is None or all(s.layer < 0 or self.group_of[s.layer] in self.rows for s in space.segments)

    def column_order(self, ir: ModelIR, li: int, task: int) -> tuple[np.ndarray, int]:
        """Layer ``li``'s zipped column order in ``task`` (original column per zipped column; the
        bias is column ``fan_in``) and ns, the count of leading shared columns (with the bias)."""
        layer = ir.layers[li]
        shared, private, offset, per_channel = [], [], 0, 1
        for g, count, per_channel in input_segments(ir, layer, self.group_of):
            if g == ALIGNED:
                shared.append(np.arange(count) + offset)
            elif g == PRIVATE:
                private.append(np.arange(count) + offset)
            else:
                perm, k = self.rows[g][task], self.k[g]
                shared.append(perm[:k] + offset)
                private.append(perm[k:] + offset)
            offset += count
        cols = [expand_channels(np.concatenate(x) if x else np.zeros(0, int), per_channel) for x in (shared, private)]
        return np.concatenate([cols[0], [layer.fan_in], cols[1]]).astype(np.int64), cols[0].size + 1
