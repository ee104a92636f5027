"""Canonical layer forms: MatMul(+Add) and token-major MatMul as Gemm, Gemm with transB=1 and
alpha=beta=1, Conv with a bias, Reshape to (batch, features) as Flatten, ReduceMean over space as
GlobalAveragePool."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ...errors import UnsupportedOpError
from .edit import set_links


def matmul_add_to_gemm(graph: gs.Graph) -> int:
    """``MatMul(x, W)`` (+ ``Add(., b)``) with constant 2-D ``W`` on a 2-D ``x`` -> ``Gemm``."""
    n = 0
    for node in list(graph.nodes):
        if node.op != "MatMul" or not isinstance(node.inputs[1], gs.Constant):
            continue
        x, w = node.inputs
        if w.values.ndim != 2 or x.shape is None or len(x.shape) != 2:
            continue
        out = node.outputs[0]
        bias = np.zeros(w.values.shape[1], dtype=w.values.dtype)
        add = out.outputs[0] if len(out.outputs) == 1 and out not in graph.outputs else None
        if add is not None and add.op == "Add":
            other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
            if isinstance(other, gs.Constant) and other.values.size == bias.size and other.values.ndim <= 2:
                bias = other.values.reshape(-1).astype(bias.dtype)
                out = add.outputs[0]
                add.outputs.clear()
        gemm_w = gs.Constant(w.name + "_T" if len(w.outputs) > 1 else w.name, np.ascontiguousarray(w.values.T))
        gemm_b = gs.Constant(f"{node.name}.bias", bias)
        node.op, node.attrs = "Gemm", {"transB": 1}
        set_links(node.inputs, [x, gemm_w, gemm_b])
        set_links(node.outputs, [out])
        n += 1
    return n


def token_matmul_to_gemm(graph: gs.Graph) -> int:
    """``MatMul(x, W)`` (+ ``Add(., b)``) with constant 2-D ``W`` on an ``x`` of rank >= 3 (token-major
    activations, (batch, tokens, features) or (tokens, batch, features)) -> ``Reshape(x, [-1, D])``,
    a canonical ``Gemm``, and a Reshape back to ``x``'s leading dimensions.

    Every leading position becomes a row of the Gemm, so a dense layer's statistics read one sample
    per token. The Reshape back takes ``x``'s leading dimensions and the feature count: a constant
    target where at most one of them is dynamic (it becomes -1), else ``Concat(Shape(x)[:-1],
    [features])`` (so shape inference keeps the feature count; a part of zipped channels gets its own).
    """
    n = 0
    for node in list(graph.nodes):
        if node.op != "MatMul" or not isinstance(node.inputs[1], gs.Constant) or not isinstance(node.inputs[0], gs.Variable):
            continue
        x, w = node.inputs
        if w.values.ndim != 2 or x.shape is None or len(x.shape) < 3:
            continue
        if not isinstance(x.shape[-1], int) or x.shape[-1] < 0:  # left open by shape inference; the
            x.shape = list(x.shape[:-1]) + [w.values.shape[0]]  # MatMul needs it to be the weight's
        if x.shape[-1] != w.values.shape[0]:
            continue
        features, lead = w.values.shape[1], list(x.shape[:-1])
        out = node.outputs[0]
        bias = np.zeros(features, dtype=w.values.dtype)
        add = out.outputs[0] if len(out.outputs) == 1 and out not in graph.outputs else None
        if add is not None and add.op == "Add":
            other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
            if isinstance(other, gs.Constant) and other.values.shape[-1:] == (features,) and \
                    other.values.size == features and other.values.ndim <= len(x.shape):
                bias = other.values.reshape(-1).astype(bias.dtype)
                out = add.outputs[0]
                add.outputs.clear()
        flat = gs.Variable(f"{node.name}.rows_in", dtype=x.dtype, shape=[None, x.shape[-1]])
        graph.nodes.append(gs.Node("Reshape", f"{node.name}.flatten", {},
                                   [x, gs.Constant(f"{node.name}.rows_shape", np.asarray([-1, x.shape[-1]], np.int64))],
                                   [flat]))
        rows = gs.Variable(f"{node.name}.rows_out", dtype=x.dtype, shape=[None, features])
        node.op, node.attrs = "Gemm", {"transB": 1}
        set_links(node.inputs, [flat, gs.Constant(f"{node.name}.weight" if len(w.outputs) > 1 else w.name,
                                             np.ascontiguousarray(w.values.T)),
                           gs.Constant(f"{node.name}.bias", bias)])
        set_links(node.outputs, [rows])
        unknown = [i for i, d in enumerate(lead) if not isinstance(d, int) or d < 0]
        if len(unknown) <= 1:
            target = gs.Constant(f"{node.name}.shape", np.asarray([-1 if i in unknown else d for i, d in enumerate(lead)]
                                                                  + [features], np.int64))
        else:  # several dynamic dimensions (batch and sequence): x's own, taken at run time
            dims = gs.Variable(f"{node.name}.lead", dtype=np.int64, shape=[len(lead)])
            graph.nodes.append(gs.Node("Shape", f"{node.name}.lead_shape", {"start": 0, "end": len(lead)}, [x], [dims])
                               if graph.opset >= 15 else
                               gs.Node("Slice", f"{node.name}.lead_slice", {},
                                       [_shape_of(graph, x, node.name), gs.Constant(f"{node.name}.s0", np.asarray([0])),
                                        gs.Constant(f"{node.name}.s1", np.asarray([len(lead)]))], [dims]))
            target = gs.Variable(f"{node.name}.target", dtype=np.int64, shape=[len(lead) + 1])
            graph.nodes.append(gs.Node("Concat", f"{node.name}.target_concat", {"axis": 0},
                                       [dims, gs.Constant(f"{node.name}.features", np.asarray([features], np.int64))],
                                       [target]))
        graph.nodes.append(gs.Node("Reshape", f"{node.name}.unflatten", {}, [rows, target], [out]))
        n += 1
    return n


def _shape_of(graph: gs.Graph, x: gs.Tensor, name: str) -> gs.Variable:
    shape = gs.Variable(f"{name}.x_shape", dtype=np.int64, shape=[len(x.shape)])
    graph.nodes.append(gs.Node("Shape", f"{name}.shape_node", {}, [x], [shape]))
    return shape


def canonicalize_gemm(graph: gs.Graph) -> int:
    """Gemm with constant B -> ``W`` (out, in), ``transB=1``, alpha and beta folded, bias (out,)."""
    n = 0
    for node in list(graph.nodes):
        if node.op != "Gemm" or not isinstance(node.inputs[1], gs.Constant):
            continue
        a = node.attrs
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        trans_a, trans_b = int(a.get("transA", 0)), int(a.get("transB", 0))
        w = node.inputs[1].values
        w = w if trans_b else w.T
        out_dim = w.shape[0]
        bias = np.zeros(out_dim, dtype=w.dtype)
        if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name:
            c = node.inputs[2]
            if not isinstance(c, gs.Constant) or c.values.size not in (1, out_dim) or c.values.ndim > 2 or (
                    c.values.ndim == 2 and c.values.shape[0] != 1):
                raise UnsupportedOpError(f"node {node.name!r} (Gemm): its C input is not a bias vector of {out_dim}")
            bias = bias + beta * c.values.reshape(-1).astype(w.dtype)
        if (alpha, beta, trans_a, trans_b) == (1.0, 1.0, 0, 1) and len(node.inputs) == 3 \
                and node.inputs[2].values.shape == (out_dim,):
            node.attrs = {"transB": 1}
            continue
        if trans_a:
            x = node.inputs[0]
            xt = gs.Variable(f"{x.name}_T", dtype=x.dtype, shape=None if x.shape is None else list(x.shape)[::-1])
            graph.nodes.append(gs.Node("Transpose", f"{node.name}_transA", {"perm": [1, 0]}, [x], [xt]))
            node.inputs[0] = xt
        set_links(node.inputs, [node.inputs[0], gs.Constant(f"{node.name}.weight", np.ascontiguousarray(alpha * w)),
                           gs.Constant(f"{node.name}.bias", bias)])
        node.attrs = {"transB": 1}
        n += 1
    return n


def add_conv_bias(graph: gs.Graph) -> int:
    """Give every Conv with a constant weight a constant bias (zeros where absent)."""
    n = 0
    for node in graph.nodes:
        if node.op == "Conv" and isinstance(node.inputs[1], gs.Constant) and (
                len(node.inputs) < 3 or node.inputs[2] is None or not node.inputs[2].name):
            w = node.inputs[1].values
            set_links(node.inputs, [node.inputs[0], node.inputs[1],
                               gs.Constant(f"{node.name}.bias", np.zeros(w.shape[0], dtype=w.dtype))])
            n += 1
    return n


def reshape_to_flatten(graph: gs.Graph) -> int:
    """``Reshape(x, [N|0|-1, F])`` with F = prod(x.shape[1:]) (static) -> ``Flatten(x, axis=1)``."""
    n = 0
    for node in graph.nodes:
        if node.op != "Reshape" or not isinstance(node.inputs[1], gs.Constant):
            continue
        x, target = node.inputs[0], [int(v) for v in np.asarray(node.inputs[1].values).reshape(-1)]
        if x.shape is None or len(x.shape) < 2 or len(target) != 2 or (int(node.attrs.get("allowzero", 0)) and 0 in target):
            continue
        rest = x.shape[1:]
        if not all(isinstance(d, int) for d in rest):
            continue
        features = int(np.prod(rest))
        if target[1] in (-1, features) and (target[0] in (0, -1) or target[0] == x.shape[0]) and \
                not (target[0] == -1 and target[1] == -1):
            node.op, node.attrs = "Flatten", {"axis": 1}
            set_links(node.inputs, [x])
            n += 1
    return n


def reduce_mean_to_pool(graph: gs.Graph) -> int:
    """``ReduceMean`` over every spatial axis of an image tensor (the dynamo exporter's global
    pooling) -> ``GlobalAveragePool`` (+ ``Flatten`` where it drops the reduced axes). Rank 3 stays:
    there the last axis is as likely a token-major tensor's features as a sequence."""
    n = 0
    for node in list(graph.nodes):
        if node.op != "ReduceMean" or node.inputs[0].shape is None:
            continue
        rank = len(node.inputs[0].shape)
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
            axes = node.inputs[1].values.reshape(-1).tolist()
        if rank < 4 or axes is None or sorted(a % rank for a in axes) != list(range(2, rank)):
            continue
        keep = int(node.attrs.get("keepdims", 1))
        out = node.outputs[0]
        node.op, node.attrs = "GlobalAveragePool", {}
        set_links(node.inputs, [node.inputs[0]])
        if not keep:
            x = node.inputs[0]
            pooled = gs.Variable(f"{out.name}_pooled", dtype=out.dtype, shape=list(x.shape[:2]) + [1] * (rank - 2))
            set_links(node.outputs, [pooled])
            graph.nodes.append(gs.Node("Flatten", f"{node.name}_flatten", {"axis": 1}, [pooled], [out]))
        n += 1
    return n


def channels_last_flatten(graph: gs.Graph) -> int:
    """``Flatten(Transpose(x, channels last))`` read only by dense layers (tf2onnx's Keras Flatten
    of an NHWC map) -> ``Flatten(x)`` with each dense layer's weight columns permuted to match.

    Channels-last flattening puts channel c at features s C + c (s a spatial position); the
    channel-major Flatten of ``x`` puts it at c S + s. The product is the same with the columns
    moved, so the channel space reaches the dense layer whole (one block of S features per
    channel) instead of being restored to each task's order first; and one Transpose is gone.
    """
    n = 0
    for node in list(graph.nodes):
        if node.op != "Flatten" or int(node.attrs.get("axis", 1)) != 1 or not node.inputs[0].inputs:
            continue
        transpose, flat = node.inputs[0].inputs[0], node.outputs[0]
        x = transpose.inputs[0] if transpose.op == "Transpose" else None
        if x is None or x.shape is None or len(x.shape) < 3 or not all(isinstance(d, int) for d in x.shape[1:]):
            continue
        rank = len(x.shape)
        if list(transpose.attrs.get("perm", [])) != [0] + list(range(2, rank)) + [1] or \
                len(node.inputs[0].outputs) != 1 or flat in graph.outputs:
            continue
        readers = list(flat.outputs)
        if not readers or not all(r.op == "Gemm" and r.inputs[0] is flat and isinstance(r.inputs[1], gs.Constant)
                                  and r.attrs == {"transB": 1} for r in readers):
            continue
        c, s = x.shape[1], int(np.prod(x.shape[2:]))
        old = (np.arange(s)[None, :] * c + np.arange(c)[:, None]).reshape(-1)  # channel-major feature -> old one
        for r in readers:
            r.inputs[1] = gs.Constant(f"{r.name}.weight_channel_major", np.ascontiguousarray(r.inputs[1].values[:, old]))
        node.inputs[0] = x
        n += 1
    return n


def split_fused_projections(graph: gs.Graph, names: list[str], parts: int = 3) -> int:
    """Each canonical Gemm named in ``names`` (a fused Q/K/V projection) as ``parts`` Gemms of equal
    widths (``<name>.q``, ``.k``, ``.v``) whose outputs a Concat joins into the original tensor: the same
    values, and three layers whose heads :mod:`onnxzip.graph.attention` can tie."""
    roles = ("q", "k", "v") if parts == 3 else tuple(str(i) for i in range(parts))
    n = 0
    for node in list(graph.nodes):
        if node.name not in names or node.op != "Gemm" or node.inputs[1].values.shape[0] % parts:
            continue
        x, w, b = node.inputs[:3]
        out = node.outputs[0]
        width = w.values.shape[0] // parts
        pieces = []
        for i, role in enumerate(roles):
            y = gs.Variable(f"{out.name}.{role}", dtype=out.dtype,
                            shape=None if out.shape is None else list(out.shape[:-1]) + [width])
            rows = slice(i * width, (i + 1) * width)
            graph.nodes.append(gs.Node("Gemm", f"{node.name}.{role}", {"transB": 1},
                                       [x, gs.Constant(f"{w.name}.{role}", np.ascontiguousarray(w.values[rows])),
                                        gs.Constant(f"{b.name}.{role}", np.ascontiguousarray(b.values[rows]))], [y]))
            pieces.append(y)
        node.op, node.attrs, node.name = "Concat", {"axis": -1}, f"{node.name}.joined"
        set_links(node.inputs, pieces)
        n += 1
    if n:
        graph.toposort()
    return n
