"""Write the zipped multi-task ONNX model.

Each task's normalized graph is replayed node by node into one graph. A tensor that carries zipped
channels is held as *parts*: per channel segment, the shared channels and the task's private
channels, each its own tensor, so that

* a layer is split into blocks: shared rows x shared input columns use ONE initializer for every
  task; the other blocks are per task; the block results are summed (Gemm's C input, or Add);
* elementwise ops, pooling, BatchNormalization, Flatten and shape ops that keep the channel axis
  run per part (per-channel constants sliced); joins run part by part; Concat just lists parts;
* identical nodes (same op, inputs and attributes) are built once: on a shared input, the fully
  shared prefix of the network is computed once for all tasks.

Ops whose channel semantics onnxzip does not model get their inputs restored to the task's channel
order (Concat + Gather). Task outputs are named ``<task>/<output>``, in the task's channel order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from ..graph import io
from ..graph.ir import ModelIR
from ..graph.spaces import ChannelSpace, broadcasts_channels, channel_dim, channel_rule, reshape_keeps_prefix
from ..registry import Registry
from ..sharing.layout import expand_channels, row_blocks
from ..sharing.plan import LayerZip, ZipPlan
from .fuse import fuse_branches

SHARED = "shared"
#: how a partly shared layer runs, by ``--favor``: whether as one op per task over its input joined
FORMS: Registry = Registry("layer form")
FORMS.add("size", False)  # shared-block op plus private-block ops and Adds: each shared block stored once
FORMS.add("speed", True)  # one op per task: the shared block stored again in each task


@dataclass
class Part:
    """One tensor of a value. ``channels``: the task's original channel ids in it (None: an unzipped
    tensor); ``shared``: its channels are the same across tasks (shared slots, or aligned inputs)."""

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
        self.initializers[name] = numpy_helper.from_array(np.require(array, requirements="C"), name)
        if shared:
            self.shared.add(name)
        return name

    def const(self, array: np.ndarray, hint: str) -> str:
        """A constant deduplicated by content (shapes, scalars, per-channel constants)."""
        array = np.require(array, requirements="C")  # (ascontiguousarray makes a scalar 1-D)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.unique(hint)
            self.initializers[name] = numpy_helper.from_array(array, name)
            self.shared.add(name)
            self._consts[key] = name
        return self._consts[key]

    def node(self, op: str, inputs: list[str], attrs: dict, hints: list[str], prefix: str,
             domain: str = "", exact: bool = False) -> list[str]:
        """Add (or reuse) a node; outputs are named ``<prefix or shared>/<hint>``.

        ``exact``: name the outputs ``<prefix>/<hint>`` (graph outputs) and never reuse the node.
        """
        key = (domain, op, tuple(inputs), repr(sorted(attrs.items())), len(hints))
        if key in self._cse and not exact:
            return self._cse[key]
        is_shared = all(i in self.shared or i == "" for i in inputs) and not exact
        scope = SHARED if is_shared else prefix
        outs = [self.unique(f"{scope}/{h}") for h in hints]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.unique(f"{scope}/{hints[0]}.node"),
                                           domain=domain or None, **attrs))
        if is_shared:
            self.shared.update(outs)
        if not exact:
            self._cse[key] = outs
        return outs


def _attrs(node: gs.Node) -> dict:
    out = {}
    for k, v in node.attrs.items():
        if isinstance(v, gs.Constant):
            v = numpy_helper.from_array(np.asarray(v.values), k)
        out[k] = v
    return out


class TaskEmitter:
    """Replays one task's graph into the builder."""

    def __init__(self, b: GraphBuilder, ir: ModelIR, plan: ZipPlan, task: int, prefix: str, shared_inputs: bool,
                 layer_names: list[str], speed: bool = False):
        self.b, self.ir, self.plan, self.t, self.prefix, self.speed = b, ir, plan, task, prefix, speed
        self.layer_names = layer_names  # the first task's layer names: shared initializers are named after them
        self.constants = plan.constants[task] if plan.constants else {}  # re-estimated BN statistics
        self.values: dict[str, Value] = {}
        self.restored: dict[str, str] = {}
        self.layer_of = {layer.name: i for i, layer in enumerate(ir.layers)}
        self.output_names = {t.name for t in ir.graph.outputs}
        for t in ir.graph.inputs:
            name = t.name if shared_inputs else f"{prefix}/{t.name}"
            if shared_inputs:
                b.shared.add(name)
            b.names.add(name)
            self.values[t.name] = Value([Part(name, None, True)], None)

    # ------------------------------------------------------------------ helpers
    def tensor(self, t: gs.Tensor) -> str:
        """The emitted name of an input tensor in task order (constants deduplicated)."""
        if isinstance(t, gs.Constant):
            return self.b.const(np.asarray(t.values), f"{self.prefix}/{t.name}")
        return self.named(t.name) if t.name else ""

    def named(self, name: str) -> str:
        """The emitted name of tensor ``name`` as one tensor in task order."""
        value = self.values[name]
        return self.restore(name) if value.space is not None else value.parts[0].tensor

    def restore(self, name: str) -> str:
        """Tensor ``name`` as one tensor in the task's own channel order (Concat + Gather)."""
        if name in self.restored:
            return self.restored[name]
        value = self.values[name]
        tensors = [p.tensor for p in value.parts]
        exact = name in self.output_names
        order = np.argsort(np.concatenate([expand_channels(p.channels, value.space.block) for p in value.parts]))
        identity = bool(np.all(order == np.arange(order.size)))
        hint = name if identity else f"{name}.joined"
        axis = value.space.axis
        if len(tensors) > 1:
            joined = self.b.node("Concat", tensors, {"axis": axis}, [hint], self.prefix, exact=exact and identity)[0]
        elif identity and exact:
            joined = self.b.node("Identity", tensors, {}, [hint], self.prefix, exact=True)[0]
        else:
            joined = tensors[0]
        if not identity:
            idx = self.b.const(order.astype(np.int64), f"{self.prefix}/{name}.order")
            joined = self.b.node("Gather", [joined, idx], {"axis": axis}, [name], self.prefix, exact=exact)[0]
        self.restored[name] = joined
        return joined

    def _part_const(self, c: np.ndarray, rank: int, part: Part, space: ChannelSpace) -> str:
        """A per-channel constant sliced to ``part``'s channels (unchanged if it broadcasts)."""
        dim = channel_dim(c, rank, space.axis)
        if dim in (None, 1):
            return self.b.const(c, f"{self.prefix}/const")
        axis = c.ndim - (rank - space.axis)
        idx = expand_channels(part.channels, space.block) if dim == space.channels * space.block else part.channels
        return self.b.const(np.take(c, idx, axis=axis), f"{self.prefix}/const")

    # ------------------------------------------------------------------ replay
    def run(self) -> None:
        plan_layers = self.plan.layers
        for node in self.ir.graph.nodes:
            li = self.layer_of.get(node.name)
            if li is not None and li in plan_layers:
                (self.follower if plan_layers[li].follower else self.layer)(node, plan_layers[li])
                continue
            zipped = [i for i, t in enumerate(node.inputs) if t.name in self.values and
                      self.values[t.name].space is not None]
            if not zipped or node.name in self.ir.spaces.restore:
                self.copy(node)
                continue
            space = self.values[node.inputs[zipped[0]].name].space
            rule = channel_rule(node, zipped[0], space.channels, space.axis)
            if rule == "concat":
                self.concat(node)
            elif rule == "reduce":
                self.reduce(node)
            elif rule == "shape":
                self.shape(node)
            elif rule == "normalize":
                self.normalize(node)
            else:
                self.per_part(node, zipped, rule)

    def copy(self, node: gs.Node) -> None:
        """Replay a node as it is, on task-order inputs."""
        inputs = [self.tensor(t) for t in node.inputs]
        aligned = all(isinstance(t, gs.Constant) or not t.name or t.name not in self.ir.spaces.private and
                      t.name not in self.ir.spaces.layout and self.values[t.name].parts[0].shared
                      for t in node.inputs)
        exact = any(t.name in self.output_names for t in node.outputs)
        outs = self.b.node(node.op, inputs, _attrs(node), [t.name for t in node.outputs], self.prefix,
                           node.domain, exact=exact)
        for t, name in zip(node.outputs, outs):
            self.values[t.name] = Value([Part(name, None, aligned)], None)

    def concat(self, node: gs.Node) -> None:
        space = self.ir.spaces.layout[node.outputs[0].name]
        parts, offset = [], 0
        for t in node.inputs:
            value = self.values[t.name]
            if value.space is None:
                count = t.shape[space.axis]
                parts.append(Part(value.parts[0].tensor, np.arange(count) + offset, value.parts[0].shared))
            else:
                count = value.space.channels
                parts.extend(Part(p.tensor, p.channels + offset, p.shared) for p in value.parts)
            offset += count
        self.values[node.outputs[0].name] = Value(parts, space)

    def joined(self, name: str) -> tuple[str, bool]:
        """Tensor ``name``'s parts as one tensor in zipped order (Concat, no Gather: for ops that
        treat every channel alike), and whether it is the same for every task."""
        parts = self.values[name].parts
        shared = all(p.shared for p in parts)
        if len(parts) == 1:
            return parts[0].tensor, shared
        return self.b.node("Concat", [p.tensor for p in parts], {"axis": self.values[name].space.axis},
                           [f"{name}.zipped"], self.prefix)[0], shared

    def shape(self, node: gs.Node) -> None:
        """Shape of a zipped tensor: of one part where the channel axis is left out (every part has
        the other dimensions), else of the parts joined."""
        value = self.values[node.inputs[0].name]
        rank = len(node.inputs[0].shape)
        start, end = (int(node.attrs.get(k, d)) for k, d in (("start", 0), ("end", rank)))
        if value.space.axis in range(rank)[start:end]:
            x, shared = self.joined(node.inputs[0].name)
        else:
            x, shared = value.parts[0].tensor, value.parts[0].shared
        outs = self.b.node(node.op, [x], _attrs(node), [t.name for t in node.outputs], self.prefix, node.domain,
                           exact=any(t.name in self.output_names for t in node.outputs))
        self.values[node.outputs[0].name] = Value([Part(outs[0], None, shared)], None)

    def reduce(self, node: gs.Node) -> None:
        """A reduction over the channel axis: its result is the same in any channel order."""
        x, shared = self.joined(node.inputs[0].name)
        inputs = [x] + [self.tensor(t) for t in node.inputs[1:]]
        outs = self.b.node(node.op, inputs, _attrs(node), [t.name for t in node.outputs], self.prefix, node.domain,
                           exact=any(t.name in self.output_names for t in node.outputs))
        for t, name in zip(node.outputs, outs):
            self.values[t.name] = Value([Part(name, None, shared)], None)

    def normalize(self, node: gs.Node) -> None:
        """LayerNormalization over the channels: on the parts joined in zipped order, with scale and
        bias permuted to match along their channel axis, then split back into the parts. Its mean
        and inverse deviation outputs (per sample) do not depend on the channel order."""
        value = self.values[node.inputs[0].name]
        x, shared = self.joined(node.inputs[0].name)
        rank = len(node.inputs[0].shape)
        block = value.space.block
        order = np.concatenate([expand_channels(p.channels, block) for p in value.parts])
        inputs = [x]
        for t in node.inputs[1:]:
            if not isinstance(t, gs.Constant):
                inputs.append(self.tensor(t))
                continue
            c = np.asarray(self.constants.get(t.name, t.values))
            axis = c.ndim - (rank - value.space.axis)  # the constant's axis aligned with the channel axis, if any
            if 0 <= axis < c.ndim and c.shape[axis] == order.size:
                c = np.take(c, order, axis=axis)
            inputs.append(self.b.const(c, f"{self.prefix}/{t.name}"))
        out_t, rest = node.outputs[0], node.outputs[1:]
        hints = [f"{out_t.name}.zipped"] + [t.name for t in rest]
        y, *stats = self.b.node(node.op, inputs, _attrs(node), hints, self.prefix, node.domain,
                                exact=any(t.name in self.output_names for t in rest))
        for t, name in zip(rest, stats):
            self.values[t.name] = Value([Part(name, None, shared)], None)
        sizes = [len(p.channels) * block for p in value.parts]
        names = [f"{out_t.name}.{'s' if p.shared else 'p'}{n}" for n, p in enumerate(value.parts)]
        outs = self._split(y, sizes, value.space.axis, names)
        self.values[out_t.name] = Value([Part(o, p.channels, shared) for o, p in zip(outs, value.parts)], value.space)

    def _split(self, y: str, sizes: list[int], axis: int, names: list[str]) -> list[str]:
        """Tensor ``y`` cut into parts of ``sizes`` along ``axis``."""
        if len(sizes) == 1:
            return [y]
        if self.ir.opset >= 13:
            return self.b.node("Split", [y, self.b.const(np.asarray(sizes, np.int64), f"{self.prefix}/split")],
                               {"axis": axis}, names, self.prefix)
        return self.b.node("Split", [y], {"axis": axis, "split": sizes}, names, self.prefix)

    def per_part(self, node: gs.Node, zipped: list[int], rule: str) -> None:
        lead = self.values[node.inputs[zipped[0]].name]
        joins = {i: self.values[t.name].parts for i, t in enumerate(node.inputs)
                 if i != zipped[0] and t.name in self.ir.spaces.layout}
        for parts in joins.values():
            if [list(p.channels) for p in parts] != [list(p.channels) for p in lead.parts]:
                raise AssertionError(f"node {node.name}: joined tensors are zipped differently")
        out_t = node.outputs[0]
        rank = len(node.inputs[zipped[0]].shape or ())
        parts = []
        for n, part in enumerate(lead.parts):
            inputs = []
            for j, t in enumerate(node.inputs):
                if j == zipped[0]:
                    inputs.append(part.tensor)
                elif j in joins:
                    inputs.append(joins[j][n].tensor)
                elif isinstance(t, gs.Constant) and rule in ("binary", "affine"):
                    c = np.asarray(self.constants.get(t.name, t.values))
                    inputs.append(self._part_const(c, rank if rule == "binary" else 2, part, lead.space))
                elif isinstance(t, gs.Constant) and rule == "keep":
                    inputs.append(self.b.const(_keep_const(node, j, np.asarray(t.values), part, lead.space, rank),
                                               f"{self.prefix}/{t.name}"))
                elif rule == "keep" and node.op == "Reshape" and j == 1:
                    inputs.append(self._part_target(t, part, lead.space))
                elif rule in ("binary", "stack") and not isinstance(t, gs.Constant) and t.name and \
                        not broadcasts_channels(t, rank, lead.space.axis):
                    inputs.append(self._slice(t, rank, part, lead.space))
                else:
                    inputs.append(self.tensor(t))
            shared = part.shared and all(joins[j][n].shared for j in joins) and all(
                i in self.b.shared or i == "" for j, i in enumerate(inputs) if j != zipped[0] and j not in joins)
            hint = f"{out_t.name}.{'s' if shared else 'p'}{n}"
            (name,) = self.b.node(node.op, inputs, _attrs(node), [hint], self.prefix, node.domain)
            parts.append(Part(name, part.channels, shared))
        self.values[out_t.name] = Value(parts, self.ir.spaces.layout.get(out_t.name, lead.space))

    def _part_target(self, t: gs.Tensor, part: Part, space: ChannelSpace) -> str:
        """A Reshape target computed as Concat(leading dims..., [C]) for one part: its own count last
        (a -1 there serves every part as it is; see spaces._reshaped_axis)."""
        maker = t.inputs[0]
        last = np.asarray(maker.inputs[-1].values).reshape(-1).copy()
        if last[-1] == -1:
            return self.tensor(t)
        last[-1] = len(part.channels) * space.block
        lead = [self.tensor(x) for x in maker.inputs[:-1]]
        return self.b.node("Concat", lead + [self.b.const(last, f"{self.prefix}/{t.name}.count")], {"axis": 0},
                           [f"{t.name}.part"], self.prefix)[0]

    def _slice(self, t: gs.Tensor, rank: int, part: Part, space: ChannelSpace) -> str:
        """An unzipped operand of a join (all channels, task order) cut to ``part``'s channels."""
        axis = len(t.shape) - (rank - space.axis)
        idx = self.b.const(expand_channels(part.channels, space.block).astype(np.int64), f"{self.prefix}/{t.name}.idx")
        return self.b.node("Gather", [self.tensor(t), idx], {"axis": axis}, [f"{t.name}.part"], self.prefix)[0]

    # ------------------------------------------------------------------ layers
    def _wname(self, index: int, what: str, common: bool) -> str:
        layer = self.layer_names[index] if common else self.ir.layers[index].name
        return f"{SHARED if common else self.prefix}/{layer}.{what}"

    def layer(self, node: gs.Node, z: LayerZip) -> None:
        layer = self.ir.layers[z.layer]
        zw = z.weights[self.t]
        where = np.empty(zw.shape[1], np.int64)
        where[z.cols[self.t]] = np.arange(zw.shape[1])  # original column -> zipped column
        value = self.values[layer.input]
        per_channel = (value.space.block if value.space else 1) * layer.kernel
        terms = []
        for n, part in enumerate(value.parts):
            cols = np.arange(layer.fan_in) if part.channels is None else expand_channels(part.channels, per_channel)
            pos = where[cols]
            terms.append((part, pos, bool(pos.size) and bool(np.all(pos < z.ns - 1)), n))
        hidden = z.layer in self.plan.hidden
        out_name = layer.output
        out_parts = []
        blocks = row_blocks(z.shared, zw.shape[0], self.t)  # (fuse: private 0, shared, private 1)
        kept = [b for b in blocks if b[0].size]
        one_op = self.speed and len(kept) * sum(1 for t in terms if t[1].size) > 1 and \
            not (len(terms) == 1 and terms[0][0].shared)
        if one_op:  # one op per task over the input joined: the shared block is stored again in each task
            x, _ = self.joined(layer.input)
            terms = [(Part(x, None, False), np.concatenate([t[1] for t in terms]), False, 0)]
            blocks = [(np.concatenate([b[0] for b in kept]), False)]
        for sel, rows_shared in blocks:
            if not sel.size:
                continue
            tag = "s" if rows_shared else "p"
            exact = not hidden and out_name in self.output_names
            bias = self.b.weight(self._wname(z.layer, f"b_{tag}", rows_shared),
                                 zw[sel, where[layer.fan_in]].astype(np.float32), rows_shared)
            acc = None
            # terms on shared input channels first: they carry the bias, and on an input every task
            # shares they stack with the other tasks' (fuse); a shared block is named by its place
            # among the shared input parts, the same in every task
            live_terms = sorted((x for x in terms if x[1].size), key=lambda x: not x[2])
            for i, (part, pos, cols_shared, n) in enumerate(live_terms):
                common = rows_shared and cols_shared
                w = zw[sel][:, pos].reshape((sel.size, -1) + layer.shape[2:]).astype(np.float32)
                wname = self.b.weight(self._wname(z.layer, f"w_{tag}{i if common else n}", common), w, common)
                last = i == len(live_terms) - 1
                hint = out_name if last and not hidden else f"{out_name}.{tag}" if last else f"{out_name}.{tag}{i}"
                acc = self._term(node, part.tensor, wname, bias if acc is None else acc, hint, exact and last,
                                 first=acc is None)
            channels = z.rows[self.t][sel]
            out_parts.append(Part(acc, channels if hidden else None, rows_shared))
        if one_op and hidden and len(kept) > 1:  # the row blocks' parts again, as joins expect (fuse
            # cancels the Split against the next layer's Concat)
            outs = self._split(out_parts[0].tensor, [sel.size for sel, _ in kept], 1,
                               [f"{out_name}.{'s' if shared else 'p'}" for _, shared in kept])
            out_parts = [Part(o, z.rows[self.t][sel], shared) for o, (sel, shared) in zip(outs, kept)]
        if hidden:
            self.values[out_name] = Value(out_parts, self.ir.spaces.layout[out_name])
        else:
            self.values[out_name] = Value(out_parts, None)

    def _term(self, node: gs.Node, x: str, w: str, acc: str, hint: str, exact: bool, first: bool) -> str:
        """``first``: op(x, w, bias=acc); else op(x, w) + acc."""
        if node.op == "Gemm":
            return self.b.node("Gemm", [x, w, acc], {"transB": 1}, [hint], self.prefix, exact=exact)[0]
        attrs = _attrs(node)
        if first:
            return self.b.node("Conv", [x, w, acc], attrs, [hint], self.prefix, exact=exact)[0]
        (y,) = self.b.node("Conv", [x, w], attrs, [hint + ".c"], self.prefix)
        return self.b.node("Add", [acc, y], {}, [hint], self.prefix, exact=exact)[0]

    def follower(self, node: gs.Node, z: LayerZip) -> None:
        """A depthwise conv, part by part (shared channels hold the same merged filters for all tasks)."""
        layer = self.ir.layers[z.layer]
        value = self.values[layer.input]
        zw = z.weights[self.t]
        parts = []
        for n, part in enumerate(value.parts):
            rows = zw[part.channels]
            w = rows[:, :-1].reshape((len(part.channels),) + layer.shape[1:]).astype(np.float32)
            b = rows[:, -1].astype(np.float32)
            # merged slots hold the same filters in every task: stored once (deduplicated by content)
            wname = self.b.const(w, self._wname(z.layer, f"w{n}", False))
            bname = self.b.const(b, self._wname(z.layer, f"b{n}", False))
            attrs = {**_attrs(node), "group": len(part.channels)}
            (out,) = self.b.node("Conv", [part.tensor, wname, bname], attrs, [f"{layer.output}.{n}"], self.prefix)
            parts.append(Part(out, part.channels, part.shared))
        self.values[layer.output] = Value(parts, value.space)


def _keep_const(node: gs.Node, slot: int, c: np.ndarray, part: Part, space: ChannelSpace, rank: int) -> np.ndarray:
    """Shape inputs of ops that keep the channel axis, for one part (Reshape/Resize sizes name it)."""
    if node.op == "Reshape" and slot == 1:
        c = c.copy()
        if space.axis == 1 and reshape_keeps_prefix(node, rank):
            c[1] = 0 if not int(node.attrs.get("allowzero", 0)) else len(part.channels) * space.block
        else:  # the channel axis and the ones after it keep their sizes: its entry comes first of them
            c[c.size - (rank - space.axis)] = len(part.channels) * space.block
    elif node.op == "Resize" and slot == 3 and c.size:
        c = c.copy()
        c[1] = len(part.channels)
    return c


def emit_model(irs: list[ModelIR], plan: ZipPlan, names: list[str], shared_inputs: bool,
               favor: str = "size") -> onnx.ModelProto:
    """Build the zipped model: one graph, every task's outputs as ``<task>/<output>`` (non-tensor
    outputs, such as skl2onnx's ZipMap, keep their declared types).

    ``favor``: "size" stores every shared block once (a partly shared layer runs as blocks plus
    Adds); "speed" runs a partly shared layer as one op per task over its input joined, storing the
    shared block in each task. Either way the tasks' parallel ops are then fused (``fuse``).
    """
    b = GraphBuilder()
    inputs, outputs = [], []
    for t, (ir, name) in enumerate(zip(irs, names)):
        em = TaskEmitter(b, ir, plan, t, name, shared_inputs, [x.name for x in irs[0].layers], FORMS.get(favor))
        em.run()
        if t == 0 or not shared_inputs:
            for inp in ir.graph.inputs:
                inputs.append(_value_info(em.values[inp.name].parts[0].tensor, inp))
        for out in ir.graph.outputs:
            final = em.tensor(out)
            want = f"{name}/{out.name}"
            if final != want:
                b.nodes.append(helper.make_node("Identity", [final], [want], name=b.unique(want + ".id")))
            kind = ir.output_types.get(out.name)
            if kind is not None and not kind.HasField("tensor_type"):
                outputs.append(helper.make_value_info(want, kind))
            else:
                outputs.append(_value_info(want, out, shape=False))
    graph = helper.make_graph(b.nodes, "onnxzip", inputs, outputs, list(b.initializers.values()))
    opsets = [helper.make_opsetid("", irs[0].opset)] + [helper.make_opsetid(d, v) for d, v in
                                                          sorted(irs[0].extra_opsets.items())]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="onnxzip")
    model.ir_version = max(helper.find_min_ir_version_for(opsets, ignore_unknown=True), 7)
    model = io.infer_shapes(model, strict_mode=True, data_prop=True)  # (run-time Reshape targets keep their sizes)
    fused, counts = fuse_branches(model, f"{SHARED}/")  # (reads the shapes)
    return io.infer_shapes(fused, strict_mode=True, data_prop=True) if any(counts.values()) else model


def _value_info(name: str, t: gs.Tensor, shape: bool = True) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype or np.float32))
    dims = None if not shape or t.shape is None else [d if isinstance(d, (int, str)) else None for d in t.shape]
    return helper.make_tensor_value_info(name, elem, dims)
