"""The one adapter to onnx-ad (pinned in pyproject, a hard dependency): reverse-mode graphs in plain
ONNX that plain ONNX Runtime runs, and every workaround for what onnx-ad emits.

onnx-ad differentiates only with respect to graph inputs; the adjoint (seed) of an output ``y`` is
the input :func:`adjoint` (y), with one trailing seed axis, and the gradient of an input ``x`` the
output :func:`adjoint` (x).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ad
from onnx import helper, numpy_helper

#: onnx-ad's error for an op it has no reverse rule for
Unsupported = onnx_ad.UnsupportedOperator
ADJOINT = "adj_"


def adjoint(name: str) -> str:
    """The name onnx-ad gives the adjoint of tensor ``name`` (a seed input, or a gradient output)."""
    return f"{ADJOINT}{name}"


def is_adjoint(name: str) -> bool:
    return name.startswith(ADJOINT)


def reverse(model: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """The reverse-mode model: ``model``'s outputs, and the gradient of every input in ``inputs``
    for the seeds of ``outputs``."""
    return onnx_ad.reverse(model, inputs=inputs, outputs=outputs, layout="onnx")


def reverse_for_one_seed(model: onnx.ModelProto, inputs: list[str], outputs: list[str], opset: int,
                         weights: list[onnx.TensorProto]) -> onnx.ModelProto:
    """:func:`reverse` of a model whose large weights were made inputs (:func:`weights_as_inputs`),
    for one seed direction, fixed for plain ONNX Runtime: unit Transposes as Reshapes, the weights
    back as initializers, the inputs older opsets require spelled out."""
    out = reverse(model, inputs, outputs)
    unit_transposes_as_reshapes(out)
    restore_weights(out, weights)
    spell_required_inputs(out, opset)
    return out


#: initializers with more elements than this travel through the reverse-graph build as graph inputs
WEIGHT_INPUT_MIN = 4096


def weights_as_inputs(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Turn ``model``'s large float initializers into graph inputs (in place) and return them: the
    reverse graph is built around their names and shapes, and gets them back after
    (:func:`restore_weights`). Building it around the data took minutes for VGG-16."""
    moved, kept = [], []
    for t in model.graph.initializer:
        big = t.data_type == onnx.TensorProto.FLOAT and int(np.prod(t.dims)) > WEIGHT_INPUT_MIN
        (moved if big else kept).append(t)
    if moved:
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in moved)
    return moved


def restore_weights(model: onnx.ModelProto, weights: list[onnx.TensorProto]) -> None:
    """The inverse of :func:`weights_as_inputs` on the reverse graph (in place)."""
    names = {t.name for t in weights}
    inputs = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.graph.initializer.extend(weights)


def unit_transposes_as_reshapes(model: onnx.ModelProto) -> int:
    """Rewrite the Transposes of a reverse graph that only move axes of size 1 (onnx-ad's trailing
    seed axis, one seed here) as Reshapes: the same values, no copy (ONNX Runtime copied every
    activation map twice per layer for them). Shapes from shape inference; where one is not
    fully known the Transpose stays. Returns the number rewritten."""
    for inp in model.graph.input:  # one seed direction (:func:`onnxzip.calibrate.fisher.neuron_fisher`)
        dims = inp.type.tensor_type.shape.dim
        if is_adjoint(inp.name) and dims and dims[-1].HasField("dim_param"):
            dims[-1].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.HasField("tensor_type") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    n = 0
    for node in model.graph.node:
        shape = shapes.get(node.input[0]) if node.op_type == "Transpose" and node.domain in ("", "ai.onnx") else None
        if shape is None:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), list(range(len(shape)))[::-1])
        if [p for p in perm if shape[p] != 1] != [i for i in range(len(shape)) if shape[i] != 1]:
            continue  # moves data
        target = f"{node.output[0]}.onnxzip_shape"
        model.graph.initializer.append(numpy_helper.from_array(np.array([shape[p] for p in perm], np.int64), target))
        node.op_type = "Reshape"
        del node.attribute[:]
        node.input.append(target)
        n += 1
    return n


#: the name of the empty float tensor that stands for an input "not given" where an op requires one
EMPTY = "onnxzip.empty_float"


def spell_required_inputs(model: onnx.ModelProto, opset: int) -> int:
    """Give the Resize nodes of a reverse graph the inputs their opset requires.

    onnx-ad's Resize rule probes the node's own interpolation with new Resize nodes that leave
    ``roi`` (and, with ``sizes``, ``scales``) out as ``""``: opset 13's spelling. Before opset 13
    those inputs are required (an empty tensor means "not given"), and ONNX Runtime refuses the
    graph ("input 1 is marked single but has an empty string"). Empty optional inputs where the
    opset allows them stay as they are.

    Returns:
        the number of nodes changed.
    """
    n = 0
    for node in model.graph.node:
        if node.op_type != "Resize" or node.domain not in ("", "ai.onnx") or "" not in list(node.input)[1:3]:
            continue
        if not 11 <= opset < 13:  # (onnx-ad does not differentiate opset 10's Resize(X, scales) at all)
            continue
        if not any(i.name == EMPTY for i in model.graph.initializer):
            model.graph.initializer.append(numpy_helper.from_array(np.zeros(0, np.float32), EMPTY))
        node.input[:] = [EMPTY if i in (1, 2) and name == "" else name for i, name in enumerate(node.input)]
        n += 1
    return n
