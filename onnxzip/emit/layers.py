"""How a zipped layer becomes ops: row blocks by input parts under the ``size`` form, one op per task
under ``speed`` (:data:`FORMS`), and depthwise followers part by part."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from ..registry import Registry
from ..sharing.layout import expand_channels, row_blocks
from ..sharing.plan import LayerZip
from .builder import SHARED, Part, Value, node_attrs

if TYPE_CHECKING:
    from .task import TaskEmitter

#: how a partly shared layer runs, by ``--favor``: whether as one op per task over its input joined
FORMS: Registry = Registry("layer form")
FORMS.add("size", False)  # shared-block op plus private-block ops and Adds: each shared block stored once
FORMS.add("speed", True)  # one op per task: the shared block stored again in each task


def _wname(em: TaskEmitter, index: int, what: str, common: bool) -> str:
    layer = em.layer_names[index] if common else em.ir.layers[index].name
    return f"{SHARED if common else em.prefix}/{layer}.{what}"


def emit_layer(em: TaskEmitter, node: gs.Node, z: LayerZip) -> None:
    """A zipped dense or conv layer of the task: per row block (shared, private; :func:`onnxzip.sharing.layout.row_blocks`)
    one op per input part, the blocks' results summed (Gemm's C input, or Add); under the ``speed`` form a
    partly shared layer runs as one op per task over its input joined."""
    layer = em.ir.layers[z.layer]
    zw = z.stored(em.t)
    where = np.empty(zw.shape[1], np.int64)
    where[z.cols[em.t]] = np.arange(zw.shape[1])  # original column -> zipped column
    if layer.kind == "embedding":
        return _emit_embedding(em, z, layer, zw, where)
    value = em.values[layer.input]
    per_channel = (value.space.block if value.space else 1) * layer.kernel
    terms = []
    for n, part in enumerate(value.parts):
        cols = np.arange(layer.fan_in) if part.channels is None else expand_channels(part.channels, per_channel)
        pos = where[cols]
        terms.append((part, pos, bool(pos.size) and bool(np.all(pos < z.ns - 1)), n))
    hidden = z.layer in em.plan.hidden
    out_name = layer.output
    out_parts = []
    blocks = row_blocks(z.shared, zw.shape[0], em.t)  # (fuse: private 0, shared, private 1)
    kept = [b for b in blocks if b[0].size]
    # (a Conv on an input every task shares too: its shared rows computed once would keep their map
    # alive across the tasks, measured to cost more memory than computing them per task; a Gemm's
    # shared rows stay one op, stacked with the tasks' own rows by fuse, stored once)
    one_op = em.speed and len(kept) * sum(1 for t in terms if t[1].size) > 1 and \
        not (node.op == "Gemm" and len(terms) == 1 and terms[0][0].shared)
    if one_op:  # one op per task over the input joined: the shared block is stored again in each task
        x, _ = em.joined(layer.input)
        terms = [(Part(x, None, False), np.concatenate([t[1] for t in terms]), False, 0)]
        blocks = [(np.concatenate([b[0] for b in kept]), False)]
    for sel, rows_shared in blocks:
        if not sel.size:
            continue
        tag = "s" if rows_shared else "p"
        exact = not hidden and out_name in em.output_names
        b = zw[sel, where[layer.fan_in]]  # (all zero, as where the file had no bias: left out)
        bias = em.b.weight(_wname(em, z.layer, f"b_{tag}", rows_shared), b.astype(np.float32), rows_shared) \
            if b.any() else None
        acc = None
        # terms on shared input channels first: they carry the bias, and on an input every task
        # shares they stack with the other tasks' (fuse); a shared block is named by its place
        # among the shared input parts, the same in every task
        live_terms = sorted((x for x in terms if x[1].size), key=lambda x: not x[2])
        for i, (part, pos, cols_shared, n) in enumerate(live_terms):
            common = rows_shared and cols_shared
            w = zw[sel][:, pos].reshape((sel.size, -1) + layer.shape[2:]).astype(np.float32)
            wname = em.b.weight(_wname(em, z.layer, f"w_{tag}{i if common else n}", common), w, common)
            last = i == len(live_terms) - 1
            hint = out_name if last and not hidden else f"{out_name}.{tag}" if last else f"{out_name}.{tag}{i}"
            acc = _term(em, node, part.tensor, wname, bias if acc is None else acc, hint, exact and last,
                             first=acc is None)
        if z.affine is not None and (sel < z.shared).any():
            acc = _affine(em, z, layer, sel, acc, out_name, tag)
        channels = z.rows[em.t][sel]
        out_parts.append(Part(acc, channels if hidden else None, rows_shared))
    if one_op and hidden and len(kept) > 1:  # the row blocks' parts again, as joins expect (fuse
        # cancels the Split against the next layer's Concat)
        outs = em.split(out_parts[0].tensor, [sel.size for sel, _ in kept], 1,
                           [f"{out_name}.{'s' if shared else 'p'}" for _, shared in kept])
        out_parts = [Part(o, z.rows[em.t][sel], shared) for o, (sel, shared) in zip(outs, kept)]
    if hidden:
        em.values[out_name] = Value(out_parts, em.ir.spaces.layout[out_name])
    else:
        em.values[out_name] = Value(out_parts, None)


def _emit_embedding(em: TaskEmitter, z: LayerZip, layer, zw: np.ndarray, where: np.ndarray) -> None:
    """An embedding layer: per row block a ``Gather`` of the ids from that block's table (its
    columns; a shared block's table stored once), the bias folded into every row."""
    ids = em.tensor(next(t for t in em.ir.graph.nodes if t.name == layer.name).inputs[1])
    hidden = z.layer in em.plan.hidden
    parts = []
    for sel, rows_shared in row_blocks(z.shared, zw.shape[0], em.t):
        if not sel.size:
            continue
        tag = "s" if rows_shared else "p"
        w, b = zw[sel][:, where[:layer.fan_in]], zw[sel, where[layer.fan_in]]
        (_, table), = layer.stored(w, b)
        name = em.b.weight(_wname(em, z.layer, f"table_{tag}", rows_shared), table.astype(np.float32), rows_shared)
        exact = not hidden and layer.output in em.output_names
        hint = layer.output if not hidden else f"{layer.output}.{tag}"
        (y,) = em.b.node("Gather", [name, ids], {"axis": 0}, [hint], em.prefix, exact=exact)
        parts.append(Part(y, z.rows[em.t][sel] if hidden else None, rows_shared))
    em.values[layer.output] = Value(parts, em.ir.spaces.layout[layer.output] if hidden else None)


def _affine(em: TaskEmitter, z: LayerZip, layer, sel: np.ndarray, acc: str, out_name: str, tag: str) -> str:
    """``--affine``: the task's scale and shift of the rows ``sel`` (1 and 0 on private rows) after
    their block, per channel (:mod:`onnxzip.sharing.affine`)."""
    a, b = z.affine[em.t]
    scale, shift = np.ones(sel.size), np.zeros(sel.size)
    mine = sel < z.shared
    scale[mine], shift[mine] = a[sel[mine]], b[sel[mine]]
    shape = (sel.size,) + (1,) * (len(layer.shape) - 2)  # (per channel: (C, 1, 1) after a conv)
    names = [em.b.weight(_wname(em, z.layer, f"{what}_{tag}", False), v.reshape(shape).astype(np.float32), False)
             for what, v in (("scale", scale), ("shift", shift))]
    (y,) = em.b.node("Mul", [acc, names[0]], {}, [f"{out_name}.{tag}.scaled"], em.prefix)
    return em.b.node("Add", [y, names[1]], {}, [f"{out_name}.{tag}.affine"], em.prefix)[0]


def _term(em: TaskEmitter, node: gs.Node, x: str, w: str, acc: str | None, hint: str, exact: bool,
          first: bool) -> str:
    """``first``: op(x, w, bias=acc) (no bias where ``acc`` is None); else op(x, w) + acc."""
    extra = [] if acc is None else [acc]
    if node.op == "Gemm":
        return em.b.node("Gemm", [x, w] + extra, {"transB": 1}, [hint], em.prefix, exact=exact)[0]
    attrs = node_attrs(node)
    if first:
        return em.b.node("Conv", [x, w] + extra, attrs, [hint], em.prefix, exact=exact)[0]
    (y,) = em.b.node("Conv", [x, w], attrs, [hint + ".c"], em.prefix)
    return em.b.node("Add", [acc, y], {}, [hint], em.prefix, exact=exact)[0]


def emit_follower(em: TaskEmitter, node: gs.Node, z: LayerZip) -> None:
    """A depthwise conv, part by part (shared channels hold the same merged filters for all tasks)."""
    layer = em.ir.layers[z.layer]
    value = em.values[layer.input]
    zw = z.weights[em.t]
    parts = []
    for n, part in enumerate(value.parts):
        rows = zw[part.channels]
        w = rows[:, :-1].reshape((len(part.channels),) + layer.shape[1:]).astype(np.float32)
        b = rows[:, -1].astype(np.float32)
        # merged slots hold the same filters in every task: stored once (deduplicated by content)
        wname = em.b.const(w, _wname(em, z.layer, f"w{n}", False))
        bname = em.b.const(b, _wname(em, z.layer, f"b{n}", False))
        attrs = {**node_attrs(node), "group": len(part.channels)}
        (out,) = em.b.node("Conv", [part.tensor, wname, bname], attrs, [f"{layer.output}.{n}"], em.prefix)
        parts.append(Part(out, part.channels, part.shared))
    em.values[layer.output] = Value(parts, value.space)
