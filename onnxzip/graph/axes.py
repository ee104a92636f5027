"""Where a shape op moves a tensor's channel axis (Transpose, Reshape, Squeeze/Unsqueeze, Gather,
Slice, reductions, Pad, Resize): the axis rules :mod:`onnxzip.graph.spaces` traces channels with."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

#: Reductions: over the channel axis they carry no channels ("reduce"); over other axes they keep them.
REDUCE = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2", "ReduceL1"})


def op_axes(node: gs.Node) -> list[int] | None:
    """An op's ``axes`` (attribute or constant input; [] when absent); None when not known."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        if not isinstance(node.inputs[1], gs.Constant):
            return None
        axes = node.inputs[1].values.reshape(-1).tolist()
    return list(axes) if axes is not None else []


def moved_axis(node: gs.Node, rank: int, axis: int = 1) -> int | None:
    """Where a shape op puts the channel axis of its first input (rank ``rank``, channels on
    ``axis``): the output's channel axis, or None where the op mixes the channels with other axes
    or drops them."""
    op, out, x = node.op, node.outputs[0], node.inputs[0]
    if op == "Transpose":
        perm = node.attrs.get("perm")
        return list(perm).index(axis) if perm is not None and axis in perm else None
    if op in REDUCE or op in ("Squeeze", "Unsqueeze"):
        axes = op_axes(node)
        if not axes:  # not known, or all axes
            return None
        if op == "Unsqueeze":
            r = rank + len(axes)
            new = sorted(a % r for a in axes)
            kept = [i for i in range(r) if i not in new]
            return kept[axis]
        gone = {a % rank for a in axes}
        if axis in gone:
            return None
        keep = op in REDUCE and int(node.attrs.get("keepdims", 1))
        return axis if keep else axis - sum(1 for a in gone if a < axis)
    if op == "Gather" and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        g = int(node.attrs.get("axis", 0)) % rank
        if g == axis:
            return None
        idx = np.asarray(node.inputs[1].values)
        return axis if g > axis else axis + idx.ndim - 1
    if op == "Slice" and len(node.inputs) >= 3:
        axes = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3].name else None
        if axes is None or not isinstance(axes, gs.Constant):
            return None
        return axis if axis not in {int(a) % rank for a in np.asarray(axes.values).reshape(-1)} else None
    if x.shape is None or axis >= len(x.shape) or not isinstance(x.shape[axis], int):
        return None
    if op == "Reshape":
        return _reshaped_axis(node, rank, axis)
    if axis != 1:
        return None
    if op == "Pad":
        pads = node.attrs.get("pads")
        if pads is None and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
            pads = node.inputs[1].values.reshape(-1).tolist()
        axes_given = len(node.inputs) > 3 and node.inputs[3].name
        return 1 if pads is not None and not axes_given and not any(pads[i] for i in (0, 1, rank, rank + 1)) else None
    if op in ("Resize", "Upsample"):
        return 1 if out.shape is not None and len(out.shape) >= 2 and out.shape[1] == x.shape[1] else None
    return None


def reshape_keeps_prefix(node: gs.Node, rank: int) -> bool:
    """A Reshape of an NCHW tensor that keeps its batch and channel dimensions ((N, C, H, W) ->
    (N, C, H*W)) by a constant target."""
    x, target = node.inputs[0], node.inputs[1]
    if not isinstance(target, gs.Constant) or x.shape is None:
        return False
    t = target.values.reshape(-1).tolist()
    zero_copies = not int(node.attrs.get("allowzero", 0))
    return len(t) >= 3 and (t[0] == x.shape[0] or (t[0] == 0 and zero_copies)) and \
        (t[1] == x.shape[1] or (t[1] == 0 and zero_copies))


def _reshaped_axis(node: gs.Node, rank: int, axis: int) -> int | None:
    """A Reshape keeps the channel axis whole when the dimensions before it stay as they are (axis 1
    of NCHW, :func:`reshape_keeps_prefix`), or when the channel axis and every axis after it keep
    their sizes (token-major: (B, T, D) -> (B*T, D) and back; a constant target names them)."""
    x, target = node.inputs[0], node.inputs[1]
    if axis == 1 and reshape_keeps_prefix(node, rank):
        return 1
    tail = list(x.shape[axis:]) if x.shape is not None else []
    if not tail or not all(isinstance(d, int) and d > 0 for d in tail):
        return None
    if isinstance(target, gs.Constant):
        t = target.values.reshape(-1).tolist()
        return len(t) - len(tail) if len(t) > len(tail) and t[len(t) - len(tail):] == tail else None
    # a target computed at run time: only Concat(..., [-1 or the channel count]) with the channels last
    # (emitted per part with its own count), its inferred shape deciding
    out, maker = node.outputs[0].shape, target.inputs[0] if len(target.inputs) == 1 else None
    last = maker.inputs[-1] if maker is not None and maker.op == "Concat" else None
    if out is None or len(tail) != 1 or not isinstance(last, gs.Constant) or \
            np.asarray(last.values).reshape(-1).tolist()[-1:] not in ([-1], [tail[0]]) or out[-1] != tail[0]:
        return None
    return len(out) - 1
