"""Normalization passes: bring any exporter's graph to one canonical form.

After :func:`normalize`, a graph holds:

* dense layers as ``Gemm(x, W, b)`` with ``W`` a constant (out, in), ``transB=1``, ``alpha=beta=1``;
* convolutions as ``Conv(x, W, b)`` with a constant bias (zeros where the file had none);
* BatchNormalization folded into the Conv/Gemm before it where that layer feeds only the BN;
* ``Reshape`` to (batch, features) as ``Flatten(axis=1)``, Reshape targets computed from shapes
  (``Shape``/``Slice``/``Gather``/``Concat``) as constants;
* no Identity or (inference) Dropout nodes, no Constant nodes, initializers not listed as inputs, and
  no nodes of constant inputs (e.g. a bias stored as (C,) and reshaped to (1, C, 1, 1): folded).

Each pass is ``pass(graph) -> int`` (the number of rewrites) and edits the onnx-graphsurgeon graph
in place. Only this module edits graphs.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter

from ..errors import InputError, UnsupportedOpError
from . import io

log = logging.getLogger(__name__)
Pass = Callable[[gs.Graph], int]
MIN_OPSET, MAX_OPSET = 9, 21
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


def onnx_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset version."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def prepare(model: onnx.ModelProto, opset: int, source: str) -> gs.Graph:
    """Check domains and opset, convert to ``opset``, infer shapes and import into graphsurgeon.

    Args:
        model: the loaded model (not modified).
        opset: the default-domain opset every task is converted to.
        source: the file name, for messages.
    """
    own = onnx_opset(model)
    if not MIN_OPSET <= own <= MAX_OPSET:
        raise InputError(f"{source}: opset {own} is not supported (onnxzip reads opset {MIN_OPSET} to {MAX_OPSET})")
    for node in model.graph.node:
        if node.domain not in KNOWN_DOMAINS:
            raise UnsupportedOpError(f"{source}: node {node.name!r} ({node.domain}:{node.op_type}) is a custom-domain "
                                     "op; onnxzip emits standard ONNX only")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    if own != opset:
        try:
            work = version_converter.convert_version(work, opset)
        except Exception as exc:  # the converter raises bare RuntimeError/ValueError/IndexError
            raise InputError(f"{source}: cannot convert opset {own} to {opset} ({str(exc).splitlines()[0]})") from None
    declared = {}
    for out in work.graph.output:  # inferred afresh: some exporters declare them wrongly (e.g. rank 0)
        if out.type.HasField("tensor_type") and out.type.tensor_type.HasField("shape"):
            declared[out.name] = onnx.TensorShapeProto()
            declared[out.name].CopyFrom(out.type.tensor_type.shape)
            out.type.tensor_type.ClearField("shape")
    try:
        work = io.infer_shapes(work, data_prop=True)
    except Exception as exc:
        raise InputError(f"{source}: shape inference failed ({str(exc).splitlines()[0]})") from None
    for out in work.graph.output:
        if out.name in declared:
            _merge_declared(out.type.tensor_type, declared[out.name], source, out.name)
    return gs.import_onnx(work)


def _merge_declared(inferred: onnx.TypeProto.Tensor, declared: onnx.TensorShapeProto, source: str, name: str) -> None:
    """A graph output's shape: the file's declaration where it agrees with inference (its dim names
    kept), inference where the declaration contradicts it (another rank, another size)."""
    if not inferred.HasField("shape"):
        inferred.shape.CopyFrom(declared)
        return
    dims = inferred.shape.dim
    if len(dims) != len(declared.dim):
        log.info("%s: output %r is declared with rank %d, but it has rank %d: the declaration is ignored",
                 source, name, len(declared.dim), len(dims))
        return
    for d, dd in zip(dims, declared.dim):
        if not d.HasField("dim_value") and (dd.HasField("dim_value") or dd.HasField("dim_param")):
            d.CopyFrom(dd)


# ---------------------------------------------------------------------------------------------- passes

def drop_initializer_inputs(graph: gs.Graph) -> int:
    """Old (IR < 4) models list initializers (or tensors made by nodes) as graph inputs; they are
    weights, not inputs."""
    keep = [t for t in graph.inputs if not isinstance(t, gs.Constant) and not t.inputs]
    n = len(graph.inputs) - len(keep)
    graph.inputs = keep
    return n


def name_nodes(graph: gs.Graph) -> int:
    """Give every node a unique, non-empty name (messages and alignment name nodes)."""
    seen: set[str] = set()
    n = 0
    for i, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            node.name = f"{node.op}_{i}" if not node.name else f"{node.name}_{i}"
            n += 1
        seen.add(node.name)
    return n


def fold_constants(graph: gs.Graph) -> int:
    """Turn Constant nodes and constant subgraphs (e.g. ConstantOfShape weights) into initializers."""
    n = 0
    for node in graph.nodes:
        if node.op == "Constant" and len(node.outputs) == 1 and "value" in node.attrs:
            out = node.outputs[0]
            const = gs.Constant(out.name, np.asarray(node.attrs["value"].values))
            _replace_tensor(graph, out, const)
            node.outputs.clear()
            n += 1
    needs_folding = any(_foldable(node) for node in graph.nodes)
    if needs_folding:
        try:
            import onnxruntime  # noqa: F401  (graphsurgeon evaluates constant subgraphs with it)
        except ImportError:
            return n
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
        x = ins[0]
        if x.shape is None:
            return None
        rank = len(x.shape)
        start, end = int(node.attrs.get("start", 0)), int(node.attrs.get("end", rank))
        start, end = (min(max(v + rank if v < 0 else v, 0), rank) for v in (start, end))
        # a static 0 stays symbolic: as a Reshape target it would mean "copy"
        return [d if isinstance(d, int) and d > 0 else (x, i) for i, d in ((i, x.shape[i]) for i in range(start, end))]
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
    model = gs.export_onnx(graph.copy(), do_type_check=False)
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


def remove_identities(graph: gs.Graph) -> int:
    """Remove Identity and inference-mode Dropout nodes, rewiring their consumers."""
    n = 0
    for node in list(graph.nodes):
        if node.op not in ("Identity", "Dropout"):
            continue
        if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs:
            raise UnsupportedOpError(f"node {node.name!r} (Dropout): its mask output is used")
        if node.op == "Dropout" and len(node.inputs) > 2 and _truthy(node.inputs[2]):
            raise UnsupportedOpError(f"node {node.name!r} (Dropout): training_mode is on")
        if _bypass(graph, node):
            n += 1
    return n


def _set(items: list, new: list) -> None:
    """Replace a graphsurgeon node's inputs/outputs (its lists keep tensor links in sync)."""
    new = list(new)
    items.clear()
    items.extend(new)


def _truthy(t: gs.Tensor) -> bool:
    return isinstance(t, gs.Constant) and bool(np.asarray(t.values).any())


def _bypass(graph: gs.Graph, node: gs.Node) -> bool:
    """Remove a node whose first output equals its first input. False where a graph output blocks it."""
    src, dst = node.inputs[0], node.outputs[0]
    if dst in graph.outputs:
        if src in graph.inputs or src in graph.outputs or isinstance(src, gs.Constant) or not src.inputs:
            return False
        producer = src.inputs[0]
        node.inputs.clear()
        node.outputs.clear()
        _replace_tensor(graph, src, dst)
        producer.outputs[producer.outputs.index(src)] = dst
    else:
        node.inputs.clear()
        node.outputs.clear()
        _replace_tensor(graph, dst, src)
    return True


def _replace_tensor(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Point every consumer of ``old`` at ``new``."""
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new
    graph.outputs = [new if t is old else t for t in graph.outputs]


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
        _set(node.inputs, [x, gemm_w, gemm_b])
        _set(node.outputs, [out])
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
        _set(node.inputs, [flat, gs.Constant(f"{node.name}.weight" if len(w.outputs) > 1 else w.name,
                                             np.ascontiguousarray(w.values.T)),
                           gs.Constant(f"{node.name}.bias", bias)])
        _set(node.outputs, [rows])
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
        _set(node.inputs, [node.inputs[0], gs.Constant(f"{node.name}.weight", np.ascontiguousarray(alpha * w)),
                           gs.Constant(f"{node.name}.bias", bias)])
        node.attrs = {"transB": 1}
        n += 1
    return n


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


def add_conv_bias(graph: gs.Graph) -> int:
    """Give every Conv with a constant weight a constant bias (zeros where absent)."""
    n = 0
    for node in graph.nodes:
        if node.op == "Conv" and isinstance(node.inputs[1], gs.Constant) and (
                len(node.inputs) < 3 or node.inputs[2] is None or not node.inputs[2].name):
            w = node.inputs[1].values
            _set(node.inputs, [node.inputs[0], node.inputs[1],
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
            _set(node.inputs, [x])
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
        _set(node.inputs, [node.inputs[0]])
        if not keep:
            x = node.inputs[0]
            pooled = gs.Variable(f"{out.name}_pooled", dtype=out.dtype, shape=list(x.shape[:2]) + [1] * (rank - 2))
            _set(node.outputs, [pooled])
            graph.nodes.append(gs.Node("Flatten", f"{node.name}_flatten", {"axis": 1}, [pooled], [out]))
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


DEFAULT_PASSES: tuple[Pass, ...] = (
    drop_initializer_inputs, name_nodes, fold_constants, fold_reshape_shapes, infer_shapes, remove_identities,
    token_matmul_to_gemm, matmul_add_to_gemm, canonicalize_gemm, fold_scaler, add_conv_bias, fold_batchnorm, reduce_mean_to_pool,
    reshape_to_flatten, unalias_weights,
)


def normalize(graph: gs.Graph, passes: tuple[Pass, ...] = DEFAULT_PASSES) -> dict[str, int]:
    """Run ``passes`` in order, then clean up and sort once.

    Returns:
        pass name -> number of rewrites.
    """
    counts = {p.__name__: p(graph) for p in passes}
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    log.debug("normalize: %s", counts)
    return counts
