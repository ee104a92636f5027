"""Constants and shapes: nodes of constant inputs folded, Reshape targets computed from shapes made
constants, shapes inferred (ai.onnx.ml ops that keep shapes included)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import io
from ..export import export
from .edit import replace_tensor


def fold_constants(graph: gs.Graph) -> int:
    """Turn Constant nodes and constant subgraphs (e.g. ConstantOfShape weights) into initializers."""
    n = 0
    for node in graph.nodes:
        if node.op == "Constant" and len(node.outputs) == 1 and "value" in node.attrs:
            out = node.outputs[0]
            const = gs.Constant(out.name, np.asarray(node.attrs["value"].values))
            replace_tensor(graph, out, const)
            node.outputs.clear()
            n += 1
    needs_folding = any(_foldable(node) for node in graph.nodes)
    if needs_folding:
        try:
            import onnxruntime  # (graphsurgeon evaluates constant subgraphs with it)
        except ImportError:
            return n
        onnxruntime.set_default_logger_severity(3)  # (its optimizers' warnings on those subgraphs: errors only)
        before = len(graph.nodes)
        gs.logger.G_LOGGER.module_severity = gs.logger.G_LOGGER.ERROR
        graph.cleanup().fold_constants(error_ok=True, flatten_subgraphs=False).cleanup()
        n += before - len(graph.nodes)
    return n


def _is_shape_of_static(t: gs.Tensor) -> bool:
    return bool(t.inputs) and t.inputs[0].op == "Shape"


#: ops never evaluated ahead of time (their outputs differ from run to run)
_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                               "Bernoulli"})


def _foldable(node: gs.Node) -> bool:
    """A node that computes a constant: every (non-empty) input is a constant, or a shape taken of a
    tensor (graphsurgeon folds those where the shape is static). E.g. ConstantOfShape weights, or a
    per-channel bias stored as (C,) and reshaped to (1, C, 1, 1) at run time."""
    named = [t for t in node.inputs if t.name]
    if not named or node.op in _NONDETERMINISTIC or (node.domain or "") not in ("", "ai.onnx") or any(
            isinstance(v, gs.Graph) for v in node.attrs.values()):
        return False  # control flow is refused later, not inlined here
    if node.op == "Shape":
        x = node.inputs[0]
        return x.shape is not None and all(isinstance(d, int) and d >= 0 for d in x.shape)
    return all(isinstance(t, gs.Constant) or _is_shape_of_static(t) for t in named)


def _shape_dims(node: gs.Node) -> list | None:
    """A Shape node's values: ints where static, ``(tensor, axis)`` where known only at run time."""
    x = node.inputs[0]
    if x.shape is None:
        return None
    rank = len(x.shape)
    start, end = int(node.attrs.get("start", 0)), int(node.attrs.get("end", rank))
    start, end = (min(max(v + rank if v < 0 else v, 0), rank) for v in (start, end))
    # a static 0 stays symbolic: as a Reshape target it would mean "copy"
    return [d if isinstance(d, int) and d > 0 else (x, i) for i, d in ((i, x.shape[i]) for i in range(start, end))]


def _shape_items(t: gs.Tensor, depth: int = 0) -> list | None:
    """A small integer tensor computed from tensor shapes, as its values: an int where known, else
    ``(tensor, axis)`` for a dimension of ``tensor`` not known until run time. None where it is
    computed otherwise (or from ops not modelled here)."""
    if depth > 32:
        return None
    if isinstance(t, gs.Constant):
        v = np.asarray(t.values)
        return [int(x) for x in v.reshape(-1)] if v.dtype.kind in "iu" and v.ndim <= 1 else None
    if len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    op, ins = node.op, node.inputs

    def const_ints(i: int) -> list[int] | None:
        if i >= len(ins) or not ins[i].name:
            return None
        c = ins[i]
        return [int(x) for x in np.asarray(c.values).reshape(-1)] if isinstance(c, gs.Constant) else None

    if (node.domain or "") not in ("", "ai.onnx"):
        return None
    if op == "Shape":
        return _shape_dims(node)
    if op in ("Identity", "Squeeze", "Unsqueeze") or (
            op == "Cast" and int(node.attrs.get("to", 0)) in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)):
        items = _shape_items(ins[0], depth + 1)
        if op in ("Squeeze", "Unsqueeze"):  # of a scalar or a vector: the values stay as they are
            axes = node.attrs.get("axes", const_ints(1))
            if items is None or (axes is not None and any(a not in (0, -1) for a in axes)):
                return None
        return items
    if op == "Concat" and int(node.attrs.get("axis", 0)) in (0, -1):
        out = []
        for x in ins:
            items = _shape_items(x, depth + 1)
            if items is None:
                return None
            out.extend(items)
        return out
    if op == "Gather" and int(node.attrs.get("axis", 0)) == 0:
        items, idx = _shape_items(ins[0], depth + 1), const_ints(1)
        if items is None or idx is None or not all(-len(items) <= i < len(items) for i in idx):
            return None
        return [items[i] for i in idx]
    if op == "Slice":
        items, starts, ends = _shape_items(ins[0], depth + 1), const_ints(1), const_ints(2)
        axes, steps = const_ints(3), const_ints(4)
        if (items is None or starts is None or ends is None or len(starts) != 1 or len(ends) != 1
                or (len(ins) > 3 and ins[3].name and axes not in ([0], [-1]))
                or (len(ins) > 4 and ins[4].name and (steps is None or steps[0] < 1))):
            return None
        return items[slice(starts[0], ends[0], steps[0] if steps else 1)]  # python's clamping = ONNX's (step > 0)
    return None


def fold_reshape_shapes(graph: gs.Graph) -> int:
    """A ``Reshape`` target computed at run time from shapes (``Concat(Slice(Shape(x), 0, 1), [-1])``,
    exporters' ``x.view(x.size(0), -1)``) -> a constant target: dimensions known statically become
    numbers, a dimension of the Reshape's own input copied to the same position becomes 0 (copy),
    and one other dimension known only at run time becomes -1."""
    n = 0
    for node in graph.nodes:
        if node.op != "Reshape" or len(node.inputs) < 2 or isinstance(node.inputs[1], gs.Constant):
            continue
        items = _shape_items(node.inputs[1])
        if items is None:
            continue
        x, allowzero = node.inputs[0], int(node.attrs.get("allowzero", 0))
        target = []
        # one dimension known only at run time (a batch size taken from another tensor) is the one
        # the element count determines: -1
        inferred = sum(1 for i, item in enumerate(items) if not isinstance(item, int) and
                       not (item[0] is x and item[1] == i and not allowzero)) == 1 and -1 not in items
        for i, item in enumerate(items):
            if isinstance(item, int):
                if allowzero and item == 0:
                    break  # a literal 0 dimension; leave such graphs alone
                target.append(item)
            elif item[0] is x and item[1] == i and not allowzero:
                target.append(0)
            elif inferred:
                target.append(-1)
            else:
                break
        else:
            if target.count(-1) > 1:
                continue
            node.inputs[1] = gs.Constant(f"{node.name}.shape", np.asarray(target, np.int64))
            for out in node.outputs:
                out.shape = None  # inferred again from the constant target
            n += 1
    return n


#: ai.onnx.ml preprocessing ops whose output has their input's shape (ONNX infers none for them)
SHAPE_KEEPING_ML = frozenset({"Scaler", "Normalizer", "Binarizer", "Imputer"})


def _propagate_ml_shapes(graph: gs.Graph) -> int:
    """Outputs of shape-keeping ai.onnx.ml ops (e.g. skl2onnx's Scaler) take their input's shape."""
    n = 0
    for node in graph.nodes:
        if node.domain == "ai.onnx.ml" and node.op in SHAPE_KEEPING_ML and node.inputs[0].shape is not None:
            out = node.outputs[0]
            if out.shape is None:
                out.shape = list(node.inputs[0].shape)
                out.dtype = out.dtype or np.float32
                n += 1
    return n


def infer_shapes(graph: gs.Graph) -> int:
    """Fill in tensor shapes left unknown (e.g. behind weights made by ConstantOfShape, now folded,
    or behind ai.onnx.ml preprocessing ops)."""
    graph.toposort()
    _propagate_ml_shapes(graph)
    unknown = [t for t in graph.tensors().values() if not isinstance(t, gs.Constant) and t.name and t.shape is None]
    if not unknown:
        return 0
    model = export(graph.copy())
    model.ir_version = max(model.ir_version, 7)  # IR < 4 ignores initializers that are not inputs
    opset = graph.opset
    extra = [o for o in model.opset_import if o.domain not in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend([onnx.helper.make_opsetid("", opset)] + extra)
    try:
        model = io.infer_shapes(model, data_prop=True)
    except Exception:  # unknown shapes only make onnxzip more conservative
        return 0
    inferred = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)}
    n = 0
    for t in unknown:
        vi = inferred.get(t.name)
        if vi is not None and vi.type.tensor_type.HasField("shape"):
            dims = vi.type.tensor_type.shape.dim
            t.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
            t.dtype = t.dtype or onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            n += 1
    return n
