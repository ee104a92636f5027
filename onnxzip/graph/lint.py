"""What TensorRT (and other deployment runtimes) need of a model, checked without a GPU.

:func:`deployment_problems` lists every way a model falls short: an opset above 20, dynamic
dimensions other than the batch (integer inputs such as token ids, and the outputs of a model that
has them, may keep a dynamic sequence length on axis 1; sizes the source files leave open pass too), nodes left to compute from constants alone, training-mode or non-standard-domain ops, and
layer weights that are not initializers.
"""
from __future__ import annotations

import onnx
from onnx import numpy_helper

from .io import static_dims

MAX_OPSET = 20
#: ops that only exist for training, or that TensorRT's ONNX parser does not take
TRAINING_OPS = frozenset({"Gradient", "Momentum", "Adagrad", "Adam", "SoftmaxCrossEntropyLoss",
                          "NegativeLogLikelihoodLoss"})
#: ops whose input slot 1 is a weight
WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1}


def _false(graph: onnx.GraphProto, name: str) -> bool:
    """Whether ``name`` is an initializer holding false/0."""
    t = next((t for t in graph.initializer if t.name == name), None)
    return t is not None and not numpy_helper.to_array(t).any()


def deployment_problems(model: onnx.ModelProto, open_sizes: dict[str, set[int]] | None = None) -> list[str]:
    """Every problem found, one line each (empty: the model passes). ``open_sizes``: input -> the axes
    its source files leave open too (image height and width: a TensorRT optimization profile covers
    them); those, and the outputs' dims computed from them, pass."""
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset > MAX_OPSET:
        problems.append(f"opset {opset}: TensorRT-safe output keeps opset <= {MAX_OPSET}")
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    integer = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    sequences = any(vi.type.tensor_type.elem_type in integer and None in static_dims(vi)[1:2] for vi in graph.input
                    if vi.type.HasField("tensor_type"))
    for vi in list(graph.input) + list(graph.output):
        if not vi.type.HasField("tensor_type"):
            continue
        dims = static_dims(vi)
        # token ids (and what is computed from them, per token) may keep a dynamic sequence on axis 1
        seq = vi.type.tensor_type.elem_type in integer if vi in graph.input else sequences
        allowed = (open_sizes or {}).get(vi.name, set()) if vi in graph.input else \
            (set(range(1, len(dims))) if open_sizes else set())
        loose = [i for i, d in enumerate(dims) if d is None and i > 0 and not (seq and i == 1) and i not in allowed]
        if loose:
            problems.append(f"{vi.name!r}: dynamic dimension(s) {loose} besides the batch")
    for node in graph.node:
        where = f"node {node.name!r} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: domain {node.domain!r} is not standard ONNX")
        if node.op_type in TRAINING_OPS:
            problems.append(f"{where}: a training op")
        if any(a.name == "training_mode" and a.i for a in node.attribute) or (
                node.op_type == "Dropout" and len(node.input) > 2 and node.input[2] and not _false(graph, node.input[2])):
            problems.append(f"{where}: training_mode is on (or not a constant false)")
        if node.op_type == "Constant":
            problems.append(f"{where}: a Constant node (fold it into an initializer)")
        named = [i for i in node.input if i]
        if named and all(i in constants for i in named) and node.op_type not in ("Constant",):
            problems.append(f"{where}: computes from constants only (fold it)")
        slot = WEIGHTED.get(node.op_type)
        if slot is not None and len(node.input) > slot and node.input[slot] not in constants:
            problems.append(f"{where}: its weight {node.input[slot]!r} is not an initializer")
    return problems
