"""The intermediate representation: one :class:`ModelIR` per task.

A ``ModelIR`` owns a normalized onnx-graphsurgeon graph (edited only by :mod:`onnxzip.graph.normalize`),
a networkx index of it (read only), its :class:`Layer` records and its channel spaces
(:mod:`onnxzip.graph.spaces`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import networkx as nx
import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import InputError, UnsupportedOpError
from .export import export
from .io import InputSpec, infer_shapes
from .normalize import normalize, prepare
from .attention import attention_blocks
from .normalize import split_fused_projections
from .spaces import Spaces, check_supported, is_depthwise, trace


@dataclass(frozen=True)
class Layer:
    """A zippable linear layer of one task's normalized graph.

    ``shape`` is the weight shape: (out, in) for dense, (out, in, kh, kw...) for conv, (out, rows)
    for an embedding (``Gather`` of integer ids from a constant (rows, out) table: a dense layer on
    one-hot ids, its neurons the table's columns; no bias tensor, a bias is folded into the table).
    ``attrs`` holds conv attributes (kernel_shape, strides, pads, dilations, auto_pad) as sorted pairs.
    """

    name: str
    kind: str  # "dense" | "conv" | "depthwise" | "embedding"
    input: str
    output: str
    weight: str
    bias: str
    shape: tuple[int, ...]
    attrs: tuple[tuple[str, object], ...] = ()

    @property
    def neurons(self) -> int:
        return self.shape[0]

    @property
    def kernel(self) -> int:
        """Weights per input channel (1 for dense)."""
        return int(np.prod(self.shape[2:], dtype=np.int64))

    @property
    def fan_in(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64))

    def attr(self, key: str, default: object = None) -> object:
        return dict(self.attrs).get(key, default)

    def stored(self, w: np.ndarray, b: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """The initializers that hold (W of ``shape``, b): weight and bias, or an embedding's table
        (rows, out) with the bias added to every row (one row is read per id)."""
        if self.kind == "embedding":
            return [(self.weight, (np.asarray(w) + np.asarray(b)[:, None]).T)]
        return [(self.weight, w), (self.bias, b)]


@dataclass
class ModelIR:
    """One task: the normalized graph, its index, layers and channel spaces."""

    name: str
    source: str
    graph: gs.Graph
    layers: list[Layer]
    spaces: Spaces
    index: nx.DiGraph = field(repr=False)
    ir_version: int = 8
    opset: int = 17
    extra_opsets: dict[str, int] = field(default_factory=dict)
    output_types: dict[str, onnx.TypeProto] = field(default_factory=dict)  # as the source file declares them
    #: input name -> its dims as the source file declares them (int, a dim name, or None), before the
    #: calibration data's sizes were fixed (:func:`onnxzip.graph.io.fix_dynamic_dims`)
    declared_inputs: dict[str, tuple[int | str | None, ...]] = field(default_factory=dict)
    weights_sha256: str = ""  # the source file's weights fingerprint (:func:`onnxzip.stamp.weights_sha256`)
    #: input name -> one calibration sample's dims (past the batch): sizes the graph leaves open to
    #: integer inputs too (a sequence length), for estimating a batch's memory
    sample_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: (float parameters, bytes) of the source file (the report's "before"; normalization adds zero biases)
    file_params: tuple[int, int] | None = None

    @property
    def inputs(self) -> list[InputSpec]:
        return [InputSpec(t.name, np.dtype(t.dtype), _dims(t.shape)) for t in self.graph.inputs]

    def open_sizes(self) -> dict[str, dict[int, str]]:
        """The float inputs' dims, past the batch, that the source file leaves open and the calibration
        data fixed: input -> axis -> the declared dim name (or ``<input>_<axis>``)."""
        out = {}
        for spec in self.inputs:
            declared = self.declared_inputs.get(spec.name, ())
            if np.dtype(spec.dtype).kind != "f":
                continue
            axes = {a: d if isinstance(d, str) else f"{spec.name}_{a}" for a, d in enumerate(declared)
                    if 0 < a < len(spec.shape) and not isinstance(d, int) and isinstance(spec.shape[a], int)}
            if axes:
                out[spec.name] = axes
        return out

    @property
    def fixed_batch(self) -> int | None:
        """The batch size an input pins, or None where the batch is dynamic."""
        return next((s.shape[0] for s in self.inputs if s.shape and s.shape[0] is not None), None)

    @property
    def hidden(self) -> list[int]:
        """Indices of the layers whose channels reach another layer (zippable)."""
        return self.spaces.hidden

    @property
    def outputs(self) -> list[str]:
        return [t.name for t in self.graph.outputs]

    def weights(self, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
        """The layer's (W, b) as stored: W of ``layer.shape``, b (out,)."""
        t = self.graph.tensors()
        if layer.kind == "embedding":
            table = np.asarray(t[layer.weight].values)
            return table.T, np.zeros(table.shape[1], table.dtype)
        return np.asarray(t[layer.weight].values), np.asarray(t[layer.bias].values)

    def to_onnx(self) -> onnx.ModelProto:
        """The normalized graph as a model (for running; the graph itself is not changed)."""
        return self.export(self.graph.copy())

    def export(self, graph: gs.Graph) -> onnx.ModelProto:
        """``graph`` (this task's graph or a part of it) as a model with this task's opsets, IR
        version and declared output types."""
        model = export(graph)
        for out in model.graph.output:  # non-tensor outputs (skl2onnx's ZipMap) keep their declared type
            declared = self.output_types.get(out.name)
            if declared is not None and not declared.HasField("tensor_type"):
                out.type.CopyFrom(declared)
        model.ir_version = self.ir_version
        del model.opset_import[:]
        model.opset_import.extend([onnx.helper.make_opsetid("", self.opset)] +
                                  [onnx.helper.make_opsetid(d, v) for d, v in sorted(self.extra_opsets.items())])
        return model


def _dims(shape) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in (shape or ()))


def build_ir(model: onnx.ModelProto, name: str, source: str, opset: int) -> ModelIR:
    """Normalize ``model`` (a copy) into a :class:`ModelIR` for task ``name``."""
    graph = prepare(model, opset, source)
    try:
        normalize(graph)
    except UnsupportedOpError as exc:
        raise UnsupportedOpError(f"{source}: {exc}") from None
    if not graph.inputs:
        raise InputError(f"{source}: the model has no inputs")
    try:
        check_supported(graph)
    except UnsupportedOpError as exc:
        raise UnsupportedOpError(f"{source}: {exc}") from None
    layers = _find_layers(graph)
    fused = [layers[b.q].name for b in attention_blocks(graph, layers) if b.q == b.k == b.v and b.out is not None]
    if fused and split_fused_projections(graph, fused):  # (three layers whose heads can be tied)
        layers = _find_layers(graph)
    extra = {o.domain: o.version for o in model.opset_import if o.domain not in ("", "ai.onnx")}
    types = {o.name: _copy(o.type) for o in model.graph.output}  # (a copy: a reference into ``model``
    # would keep the whole of it, its weights, alive as long as the IR)
    return ModelIR(name, source, graph, layers, trace(graph, layers), _index(graph), max(model.ir_version, 7),
                   opset, extra, types)


def _copy(message):
    out = type(message)()
    out.CopyFrom(message)
    return out


#: an embedding table with more rows stays an ordinary op (its one-hot statistic is rows^2; a token
#: vocabulary's needs a diagonal one, not built yet)
EMBEDDING_MAX_ROWS = 1024


def _embedding(node: gs.Node) -> Layer | None:
    """``Gather(table, ids)`` from a constant float (rows, out) table read by nothing else, on
    non-constant integer ids, along axis 0, as an embedding layer."""
    if node.op != "Gather" or len(node.inputs) != 2 or int(node.attrs.get("axis", 0)) != 0:
        return None
    table, ids = node.inputs
    if not isinstance(table, gs.Constant) or isinstance(ids, gs.Constant) or table.values.ndim != 2 or \
            table.values.dtype.kind != "f" or len(table.outputs) != 1 or not 1 < table.values.shape[0] <= \
            EMBEDDING_MAX_ROWS or (ids.dtype is not None and np.dtype(ids.dtype).kind not in "iu"):
        return None
    rows, out = table.values.shape
    return Layer(node.name, "embedding", ids.name, node.outputs[0].name, table.name, "", (out, rows))


def _find_layers(graph: gs.Graph) -> list[Layer]:
    layers = []
    for node in graph.nodes:
        embedding = _embedding(node)
        if embedding is not None:
            layers.append(embedding)
            continue
        if node.op not in ("Conv", "Gemm") or not all(isinstance(t, gs.Constant) for t in node.inputs[1:3]):
            continue
        w, b = node.inputs[1], node.inputs[2]
        if node.op == "Gemm":
            layers.append(Layer(node.name, "dense", node.inputs[0].name, node.outputs[0].name, w.name, b.name,
                                tuple(w.values.shape)))
            continue
        if int(node.attrs.get("group", 1)) != 1 and not is_depthwise(node):
            continue  # grouped conv: an ordinary op (its inputs are restored to task order)
        keys = ("auto_pad", "dilations", "kernel_shape", "pads", "strides")
        attrs = tuple(sorted((k, _plain(node.attrs[k])) for k in keys if k in node.attrs))
        kind = "depthwise" if is_depthwise(node) else "conv"
        layers.append(Layer(node.name, kind, node.inputs[0].name, node.outputs[0].name, w.name, b.name,
                            tuple(w.values.shape), attrs))
    return layers


def _plain(v: object) -> object:
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v)
    return v.decode() if isinstance(v, bytes) else v


def _index(graph: gs.Graph) -> nx.DiGraph:
    """An op-labelled DiGraph: node name -> attrs (op, node); edges carry the input slot."""
    g = nx.DiGraph()
    for node in graph.nodes:
        g.add_node(node.name, op=node.op, node=node)
    for node in graph.nodes:
        for slot, t in enumerate(node.inputs):
            for producer in t.inputs:
                g.add_edge(producer.name, node.name, slot=slot)
    return g


def reorder(ir: ModelIR, names: list[str]) -> ModelIR:
    """A ModelIR whose nodes follow ``names`` (a topological order), layers re-listed in that order."""
    by_name = {n.name: n for n in ir.graph.nodes}
    ir.graph.nodes = [by_name[n] for n in names]
    layers = _find_layers(ir.graph)  # (every other field kept: declared inputs, fingerprint, sample dims)
    return replace(ir, layers=layers, spaces=trace(ir.graph, layers, ir.spaces.untied), index=_index(ir.graph))


def same_inputs(irs: list[ModelIR]) -> bool:
    """Whether every task declares the same inputs (names, types, shapes past the batch)."""
    first = [(s.name, s.dtype, s.shape[1:]) for s in irs[0].inputs]
    return all([(s.name, s.dtype, s.shape[1:]) for s in ir.inputs] == first for ir in irs[1:])


def activation_bytes(ir: ModelIR) -> int:
    """Bytes of every float tensor of one sample's forward pass (shape inference at batch 1; cached
    per IR)."""
    return _tensor_bytes(ir)[0]


def largest_tensor_bytes(ir: ModelIR) -> int:
    """Bytes of the largest float tensor of one sample's forward pass."""
    return _tensor_bytes(ir)[1]


def _tensor_bytes(ir: ModelIR) -> tuple[int, int]:
    """(total, largest) bytes of the float tensors of one sample, cached on the IR."""
    cached = getattr(ir, "_tensor_bytes", None)
    if cached is not None:
        return cached
    model = ir.to_onnx()
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_value = 1
        for d, size in zip(dims[1:], ir.sample_dims.get(inp.name, ())):
            if not d.HasField("dim_value"):
                d.dim_value = size  # (a sequence length the token ids leave open: the data's)
    del model.graph.value_info[:]  # (inferred again from these sizes, not kept symbolic)
    model = infer_shapes(model)
    sizes = [0]
    for vi in list(model.graph.value_info) + list(model.graph.input):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and dims and all(d.HasField("dim_value") for d in dims):
            sizes.append(4 * int(np.prod([d.dim_value for d in dims])))
    ir._tensor_bytes = (sum(sizes), max(sizes))
    return ir._tensor_bytes


def batch_within(ir: ModelIR, batch: int, budget: int) -> int:
    """``batch``, or fewer samples where one batch's activations would pass ``budget`` bytes."""
    return max(1, min(batch, budget // max(activation_bytes(ir), 1)))
