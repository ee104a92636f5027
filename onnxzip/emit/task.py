"""Replaying one task's normalized graph into the zipped graph, tensor by tensor as channel parts."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..graph.ir import ModelIR
from ..graph.spaces import channel_rule
from ..sharing.layout import expand_channels
from ..sharing.plan import ZipPlan
from .builder import GraphBuilder, Part, Value, node_attrs
from .heads import emit_core
from .layers import emit_follower, emit_layer
from .parts import emit_per_part


@dataclass
class Emitting:
    """What every task's emitter shares: the graph builder, the plan, whether the tasks share their
    inputs, the first task's layer names (shared initializers are named after them), and whether a
    partly shared layer runs as one op per task (:data:`onnxzip.emit.layers.FORMS`)."""

    builder: GraphBuilder
    plan: ZipPlan
    shared_inputs: bool
    layer_names: list[str]
    one_op: bool = False


class TaskEmitter:
    """Replays one task's graph into the builder."""

    def __init__(self, common: Emitting, ir: ModelIR, task: int, prefix: str):
        b, plan, shared_inputs = common.builder, common.plan, common.shared_inputs
        self.b, self.ir, self.plan, self.t, self.prefix, self.speed = b, ir, plan, task, prefix, common.one_op
        self.layer_names = common.layer_names
        self.constants = plan.constants[task] if plan.constants else {}  # re-estimated BN statistics
        self.values: dict[str, Value] = {}
        self.restored: dict[str, str] = {}
        self.layer_of = {layer.name: i for i, layer in enumerate(ir.layers)}
        self.output_names = {t.name for t in ir.graph.outputs}
        self.cores = ir.spaces.cores()  # tied attention cores' nodes
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

    # ------------------------------------------------------------------ replay
    def run(self) -> None:
        plan_layers = self.plan.layers
        for node in self.ir.graph.nodes:
            li = self.layer_of.get(node.name)
            if li is not None and li in plan_layers:
                (emit_follower if plan_layers[li].follower else emit_layer)(self, node, plan_layers[li])
                continue
            if node.name in self.cores:
                emit_core(self, node, self.cores[node.name])
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
                emit_per_part(self, node, zipped, rule)

    def copy(self, node: gs.Node) -> None:
        """Replay a node as it is, on task-order inputs."""
        inputs = [self.tensor(t) for t in node.inputs]
        aligned = all(isinstance(t, gs.Constant) or not t.name or t.name not in self.ir.spaces.private and
                      t.name not in self.ir.spaces.layout and self.values[t.name].parts[0].shared
                      for t in node.inputs)
        exact = any(t.name in self.output_names for t in node.outputs)
        outs = self.b.node(node.op, inputs, node_attrs(node), [t.name for t in node.outputs], self.prefix,
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
        outs = self.b.node(node.op, [x], node_attrs(node), [t.name for t in node.outputs], self.prefix, node.domain,
                           exact=any(t.name in self.output_names for t in node.outputs))
        self.values[node.outputs[0].name] = Value([Part(outs[0], None, shared)], None)

    def reduce(self, node: gs.Node) -> None:
        """A reduction over the channel axis: its result is the same in any channel order."""
        x, shared = self.joined(node.inputs[0].name)
        inputs = [x] + [self.tensor(t) for t in node.inputs[1:]]
        outs = self.b.node(node.op, inputs, node_attrs(node), [t.name for t in node.outputs], self.prefix, node.domain,
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
        y, *stats = self.b.node(node.op, inputs, node_attrs(node), hints, self.prefix, node.domain,
                                exact=any(t.name in self.output_names for t in rest))
        for t, name in zip(rest, stats):
            self.values[t.name] = Value([Part(name, None, shared)], None)
        sizes = [len(p.channels) * block for p in value.parts]
        names = [f"{out_t.name}.{'s' if p.shared else 'p'}{n}" for n, p in enumerate(value.parts)]
        outs = self.split(y, sizes, value.space.axis, names)
        self.values[out_t.name] = Value([Part(o, p.channels, shared) for o, p in zip(outs, value.parts)], value.space)

    def split(self, y: str, sizes: list[int], axis: int, names: list[str]) -> list[str]:
        """Tensor ``y`` cut into parts of ``sizes`` along ``axis``."""
        if len(sizes) == 1:
            return [y]
        if self.ir.opset >= 13:
            return self.b.node("Split", [y, self.b.const(np.asarray(sizes, np.int64), f"{self.prefix}/split")],
                               {"axis": axis}, names, self.prefix)
        return self.b.node("Split", [y], {"axis": axis, "split": sizes}, names, self.prefix)
