"""Reading a model in: domains and opset checked, converted to one opset, imported into graphsurgeon;
nodes named, initializers off the input list."""
from __future__ import annotations

import logging

import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter

from ...errors import InputError, UnsupportedOpError
from .. import io

log = logging.getLogger(__name__)


#: the default-domain opsets onnxzip reads (what it writes is capped by :data:`onnxzip.graph.lint.MAX_OPSET`)
READ_OPSETS = (9, 21)


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
    if not READ_OPSETS[0] <= own <= READ_OPSETS[1]:
        raise InputError(f"{source}: opset {own} is not supported (onnxzip reads opset {READ_OPSETS[0]} to {READ_OPSETS[1]})")
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
    graph = gs.import_onnx(work)
    # nothing of ``work`` is kept: a reference to any part of a protobuf message keeps all of it, its
    # weights, in memory as long as the graph (measured: 0.44 GB more per BERT-base task). So every
    # constant is read now (a lazy one holds its tensor), and the opset list is copied out
    attrs = [v for node in graph.nodes for v in node.attrs.values() if isinstance(v, gs.Constant)]
    for t in list(graph.tensors().values()) + attrs:
        if isinstance(t, gs.Constant):
            t.values  # noqa: B018
    domains = []
    for d in graph.import_domains or []:
        domains.append(onnx.OperatorSetIdProto())
        domains[-1].CopyFrom(d)
    graph.import_domains = domains
    return graph


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
