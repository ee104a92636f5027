"""Write the zipped multi-task ONNX model.

Each task's normalized graph is replayed node by node into one graph. A tensor that carries a
zipped layer's channels is held as *parts*: the shared channels and the task's private channels,
each its own tensor, so that

* a layer is split into blocks: shared rows x shared input columns use ONE initializer for every
  task; the other blocks are per task; the block results are summed (Gemm's C input, or Add);
* elementwise ops, pooling and Flatten run per part;
* identical nodes (same op, inputs and attributes) are built once: on a shared input, the fully
  shared prefix of the network is computed once for all tasks.

Task outputs are named ``<task>/<output>``; a graph output carrying zipped channels is restored
to the task's channel order (Concat + Gather).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from .ir import ChannelSpace, ModelIR, channel_rule, channel_dim
from .zipper import LayerZip, ZipPlan

SHARED = "shared"


@dataclass
class Part:
    """One tensor of a value: ``channels`` are the task's original channel ids in it (None: unzipped)."""

    tensor: str
    channels: np.ndarray | None
    shared: bool


@dataclass
class Value:
    parts: list[Part]
    space: ChannelSpace | None


class GraphBuilder:
    """Collects nodes and initializers; deduplicates identical nodes and non-weight constants."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.names: set[str] = set()
        self.shared: set[str] = set()
        self._cse: dict[tuple, list[str]] = {}
        self._consts: dict[tuple, str] = {}

    def unique(self, name: str) -> str:
        out, i = name, 1
        while out in self.names:
            out, i = f"{name}_{i}", i + 1
        self.names.add(out)
        return out

    def weight(self, name: str, array: np.ndarray, shared: bool) -> str:
        """A named initializer (``name`` is used once; a second call returns it unchanged)."""
        if name in self.initializers:
            return name
        self.names.add(name)
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        if shared:
            self.shared.add(name)
        return name

    def const(self, array: np.ndarray, hint: str) -> str:
        """A constant deduplicated by content (shapes, scalars, per-channel constants)."""
        array = np.ascontiguousarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.unique(hint)
            self.initializers[name] = numpy_helper.from_array(array, name)
            self.shared.add(name)
            self._consts[key] = name
        return self._consts[key]

    def node(self, op: str, inputs: list[str], attrs: dict, hints: list[str], prefix: str,
             domain: str = "", name: str | None = None, exact: list[bool] | None = None) -> list[str]:
        """Add (or reuse) a node; outputs are named ``<prefix or shared>/<hint>``.

        ``exact[i]`` names output i ``<prefix>/<hint>`` verbatim (graph outputs).
        """
        key = (domain, op, tuple(inputs), repr(sorted(attrs.items())), len(hints))
        if key in self._cse and not any(exact or []):
            return self._cse[key]
        is_shared = all(i in self.shared or i == "" for i in inputs)
        scope = SHARED if is_shared and not any(exact or []) else prefix
        outs = [self.unique(f"{scope}/{h}") for h in hints]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.unique(f"{scope}/{name or hints[0]}"),
                                           domain=domain or None, **attrs))
        if is_shared and not any(exact or []):
            self.shared.update(outs)
        self._cse[key] = outs
        return outs


def _attrs(node: gs.Node) -> dict:
    out = {}
    for k, v in node.attrs.items():
        if isinstance(v, gs.Constant):
            v = numpy_helper.from_array(np.asarray(v.values), k)
        elif isinstance(v, gs.Graph):
            raise NotImplementedError(f"node {node.name!r}: subgraph attributes are not emitted")
        out[k] = v
    return out


def _expand(channels: np.ndarray, block: int) -> np.ndarray:
    return (np.asarray(channels)[:, None] * block + np.arange(block)).reshape(-1)


class TaskEmitter:
    """Replays one task's graph into the builder."""

    def __init__(self, b: GraphBuilder, ir: ModelIR, plan: ZipPlan, task: int, prefix: str, shared_inputs: bool,
                 layer_names: list[str]):
        self.b, self.ir, self.plan, self.t, self.prefix = b, ir, plan, task, prefix
        self.layer_names = layer_names  # the first task's layer names: shared initializers are named after them
        self.values: dict[str, Value] = {}
        self.restored: dict[str, str] = {}  # graph outputs carrying zipped channels, in task order
        self.layer_of = {layer.name: i for i, layer in enumerate(ir.layers)}
        self.output_names = {t.name for t in ir.graph.outputs}
        for t in ir.graph.inputs:
            name = t.name if shared_inputs else f"{prefix}/{t.name}"
            if shared_inputs:
                b.shared.add(name)
            b.names.add(name)
            self.values[t.name] = Value([Part(name, None, shared_inputs)], None)

    def tensor(self, t: gs.Tensor) -> str:
        """The emitted name of an unzipped input tensor (constants deduplicated)."""
        if isinstance(t, gs.Constant):
            return self.b.const(np.asarray(t.values), f"{self.prefix}/{t.name}")
        if not t.name:
            return ""
        parts = self.values[t.name].parts
        assert len(parts) == 1 and parts[0].channels is None, f"{t.name} carries zipped channels"
        return parts[0].tensor

    def run(self) -> None:
        for node in self.ir.graph.nodes:
            if node.name in self.layer_of:
                self.layer(node, self.plan.layers[self.layer_of[node.name]])
                continue
            spaced = [i for i, t in enumerate(node.inputs) if t.name in self.values and
                      self.values[t.name].space is not None]
            if spaced:
                self.per_part(node, spaced[0], channel_rule(node, spaced[0]))
            else:
                self.copy(node)

    def _exact(self, t: gs.Tensor) -> bool:
        return t.name in self.output_names

    def copy(self, node: gs.Node) -> None:
        inputs = [self.tensor(t) for t in node.inputs]
        outs = self.b.node(node.op, inputs, _attrs(node), [t.name for t in node.outputs], self.prefix,
                           node.domain, node.name, [self._exact(t) for t in node.outputs])
        for t, name in zip(node.outputs, outs):
            self.values[t.name] = Value([Part(name, None, name in self.b.shared)], None)

    def per_part(self, node: gs.Node, slot: int, rule: str) -> None:
        value = self.values[node.inputs[slot].name]
        out_t = node.outputs[0]
        parts = []
        for i, part in enumerate(value.parts):
            inputs = []
            for j, t in enumerate(node.inputs):
                if j == slot:
                    inputs.append(part.tensor)
                elif rule == "binary":
                    inputs.append(self._channel_const(np.asarray(t.values), node.inputs[slot], part, value.space))
                else:
                    inputs.append(self.tensor(t))
            hint = f"{out_t.name}.{'s' if part.shared else 'p'}"
            (name,) = self.b.node(node.op, inputs, _attrs(node), [hint], self.prefix, node.domain)
            parts.append(Part(name, part.channels, part.shared))
        space = self.ir.spaces.get(out_t.name)
        self.values[out_t.name] = Value(parts, space)
        if out_t.name in self.output_names:
            self.restore(out_t.name)

    def _channel_const(self, c: np.ndarray, x: gs.Tensor, part: Part, space: ChannelSpace) -> str:
        rank = len(x.shape)
        dim = channel_dim(c, rank)
        if dim in (None, 1):
            return self.b.const(c, f"{self.prefix}/const")
        axis = c.ndim - (rank - 1)
        block = space.block if dim != self.ir.layers[space.layer].neurons else 1
        return self.b.const(np.take(c, _expand(part.channels, block), axis=axis), f"{self.prefix}/const")

    def restore(self, name: str) -> None:
        """Give graph output ``name`` as one tensor in the task's own channel order (its parts stay
        in use for the nodes downstream)."""
        value = self.values[name]
        block = value.space.block
        tensors = [p.tensor for p in value.parts]
        joined = tensors[0] if len(tensors) == 1 else \
            self.b.node("Concat", tensors, {"axis": 1}, [f"{name}.joined"], self.prefix)[0]
        order = np.argsort(np.concatenate([_expand(p.channels, block) for p in value.parts]))
        idx = self.b.const(order.astype(np.int64), f"{self.prefix}/{name}.order")
        (out,) = self.b.node("Gather", [joined, idx], {"axis": 1}, [name], self.prefix, exact=[True])
        self.restored[name] = out

    def layer(self, node: gs.Node, z: LayerZip) -> None:
        ir_layer = self.ir.layers[z.layer]
        zw = z.weights[self.t]
        value = self.values[ir_layer.input]
        if value.space is None:
            in_parts = [(value.parts[0], slice(0, z.ns - 1), True)]
        else:
            in_parts = [(p, slice(0, z.ns - 1) if p.shared else slice(z.ns, zw.shape[1]), p.shared)
                        for p in value.parts]
        in_parts = [(p, cols, sh) for p, cols, sh in in_parts if cols.stop > cols.start]
        hidden = z.layer in self.plan.hidden
        blocks = [(0, z.shared, True), (z.shared, zw.shape[0], False)]
        out_parts = []
        out_name = ir_layer.output
        for r0, r1, rows_shared in blocks:
            if r1 == r0:
                continue
            tag = "s" if rows_shared else "p"
            exact = not hidden and out_name in self.output_names and r0 == 0 and r1 == zw.shape[0]
            common_bias = rows_shared
            bias = self.b.weight(self._wname(z.layer, f"b_{tag}", common_bias), zw[r0:r1, z.ns - 1]
                                 .astype(np.float32), common_bias)
            acc = None
            for n_term, (part, cols, cols_shared) in enumerate(in_parts):
                common = rows_shared and cols_shared
                w = zw[r0:r1, cols]
                w = w.reshape((r1 - r0, -1) + ir_layer.shape[2:]).astype(np.float32)
                wname = self.b.weight(self._wname(z.layer, f"w_{tag}{'s' if cols_shared else 'p'}", common),
                                      w, common)
                last = n_term == len(in_parts) - 1
                hint = out_name if last and not hidden else f"{out_name}.{tag}" if last else f"{out_name}.{tag}{n_term}"
                acc = self._term(node, part.tensor, wname, bias if acc is None else acc, hint,
                                 exact and last, first=acc is None)
            if acc is None:  # no input columns at all: the bias alone (not reachable for real layers)
                raise AssertionError(f"layer {ir_layer.name} has no input columns")
            channels = self.plan.layers[z.layer].rows[self.t][r0:r1]
            out_parts.append(Part(acc, channels if hidden else None, rows_shared))
        if hidden:
            self.values[out_name] = Value(out_parts, ChannelSpace(z.layer))
            if out_name in self.output_names:
                self.restore(out_name)
        else:
            self.values[out_name] = Value(out_parts, None)

    def _wname(self, index: int, what: str, common: bool) -> str:
        layer = self.layer_names[index] if common else self.ir.layers[index].name
        return f"{SHARED if common else self.prefix}/{layer}.{what}"

    def _term(self, node: gs.Node, x: str, w: str, acc: str, hint: str, exact: bool, first: bool) -> str:
        """``first``: op(x, w, bias=acc); else op(x, w) + acc."""
        if node.op == "Gemm":
            (out,) = self.b.node("Gemm", [x, w, acc], {"transB": 1}, [hint], self.prefix, exact=[exact])
            return out
        attrs = _attrs(node)
        if first:
            (out,) = self.b.node("Conv", [x, w, acc], attrs, [hint], self.prefix, exact=[exact])
            return out
        (y,) = self.b.node("Conv", [x, w], attrs, [hint + ".c"], self.prefix)
        (out,) = self.b.node("Add", [acc, y], {}, [hint], self.prefix, exact=[exact])
        return out


def emit_model(irs: list[ModelIR], plan: ZipPlan, names: list[str], shared_inputs: bool) -> onnx.ModelProto:
    """Build the zipped model: one graph, every task's outputs as ``<task>/<output>``."""
    b = GraphBuilder()
    inputs, outputs = [], []
    for t, (ir, name) in enumerate(zip(irs, names)):
        em = TaskEmitter(b, ir, plan, t, name, shared_inputs, [x.name for x in irs[0].layers])
        em.run()
        if t == 0 or not shared_inputs:
            for inp in ir.graph.inputs:
                inputs.append(_value_info(em.values[inp.name].parts[0].tensor, inp))
        for out in ir.graph.outputs:
            final = em.restored.get(out.name) or em.values[out.name].parts[0].tensor
            want = f"{name}/{out.name}"
            if final != want:
                b.nodes.append(helper.make_node("Identity", [final], [want], name=b.unique(want + ".id")))
            outputs.append(_value_info(want, out, shape=False))
    graph = helper.make_graph(b.nodes, "onnxzip", inputs, outputs, list(b.initializers.values()))
    opsets = [helper.make_opsetid("", irs[0].opset)] + [helper.make_opsetid(d, v) for d, v in
                                                          sorted(irs[0].extra_opsets.items())]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="onnxzip")
    model.ir_version = max(helper.find_min_ir_version_for(opsets, ignore_unknown=True), 7)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _value_info(name: str, t: gs.Tensor, shape: bool = True) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype or np.float32))
    dims = None if not shape or t.shape is None else [d if isinstance(d, (int, str)) else None for d in t.shape]
    return helper.make_tensor_value_info(name, elem, dims)
