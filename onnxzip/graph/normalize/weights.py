"""Weights folded into layers: BatchNormalization, skl2onnx's Scaler, aliased initializers unshared."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ...errors import UnsupportedOpError


def fold_batchnorm(graph: gs.Graph) -> int:
    """Fold inference BatchNormalization into the Conv/Gemm that feeds only it.

    Needs canonical Gemm/Conv (constant W and b). Keeps BN where the layer output is used elsewhere.
    """
    n = 0
    for bn in list(graph.nodes):
        if bn.op != "BatchNormalization" or not bn.inputs[0].inputs:
            continue
        x = bn.inputs[0]
        layer = x.inputs[0]
        if (layer.op not in ("Conv", "Gemm") or len(x.outputs) != 1 or x in graph.outputs
                or not all(isinstance(t, gs.Constant) for t in bn.inputs[1:5])
                or not all(isinstance(t, gs.Constant) for t in layer.inputs[1:3])):
            continue
        if int(bn.attrs.get("training_mode", 0)) or any(o.outputs for o in bn.outputs[1:]):
            raise UnsupportedOpError(f"node {bn.name!r} (BatchNormalization): training mode is not supported")
        scale, shift, mean, var = (np.asarray(t.values, dtype=np.float64) for t in bn.inputs[1:5])
        s = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        w, b = layer.inputs[1].values, layer.inputs[2].values
        if w.shape[0] != s.size:
            continue
        new_w = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
        new_b = ((b.astype(np.float64) - mean) * s + shift).astype(b.dtype)
        y = bn.outputs[0]
        bn.inputs.clear()
        bn.outputs.clear()
        layer.inputs[1] = gs.Constant(f"{layer.name}.weight", new_w)
        layer.inputs[2] = gs.Constant(f"{layer.name}.bias", new_b)
        layer.outputs[0] = y
        n += 1
    return n


def fold_scaler(graph: gs.Graph) -> int:
    """Fold an ai.onnx.ml ``Scaler`` (y = (x - offset) * scale; skl2onnx's StandardScaler) into the
    dense layers it feeds (through a Cast to float, a no-op on float input), so that tasks with
    their own scalers read one raw input. Needs canonical Gemm."""
    n = 0
    for node in list(graph.nodes):
        if node.op != "Scaler" or node.domain != "ai.onnx.ml" or node.inputs[0].dtype != np.float32:
            continue
        out, casts = node.outputs[0], []
        consumers = list(out.outputs)
        for c in list(consumers):
            if c.op == "Cast" and int(c.attrs.get("to", 0)) == onnx.TensorProto.FLOAT:
                casts.append(c)
                consumers.remove(c)
                consumers.extend(c.outputs[0].outputs)
        if not consumers or out in graph.outputs or any(c.outputs[0] in graph.outputs for c in casts) or not all(
                c.op == "Gemm" and all(isinstance(t, gs.Constant) for t in c.inputs[1:3]) for c in consumers):
            continue
        width = consumers[0].inputs[1].values.shape[1]
        offset = np.broadcast_to(np.asarray(node.attrs.get("offset", [0.0]), np.float64), (width,))
        scale = np.broadcast_to(np.asarray(node.attrs.get("scale", [1.0]), np.float64), (width,))
        for c in consumers:
            w, b = (np.asarray(t.values, np.float64) for t in c.inputs[1:3])
            c.inputs[1] = gs.Constant(f"{c.name}.weight", (w * scale).astype(np.float32))
            c.inputs[2] = gs.Constant(f"{c.name}.bias", (b - w @ (scale * offset)).astype(np.float32))
            c.inputs[0] = node.inputs[0]
        n += 1
    return n


def unalias_weights(graph: gs.Graph) -> int:
    """Give every Conv/Gemm its own weight and bias tensors.

    Exporters alias byte-identical initializers (torch's legacy exporter through Identity nodes,
    removed above): two layers that happen to hold equal values are not one shared layer, and
    onnxzip rewrites each layer's weights on its own.
    """
    seen: set[int] = set()
    n = 0
    for node in graph.nodes:
        if node.op not in ("Conv", "Gemm"):
            continue
        for i, t in enumerate(node.inputs[1:3], start=1):
            if not isinstance(t, gs.Constant):
                continue
            if id(t) in seen or len(t.outputs) > 1:
                if id(t) in seen:
                    node.inputs[i] = gs.Constant(f"{node.name}.{'weight' if i == 1 else 'bias'}",
                                                 np.array(t.values, copy=True))
                    n += 1
            seen.add(id(node.inputs[i]))
    return n
