"""Fuse the tasks' side-by-side ops of an emitted model into fewer, wider ones (horizontal fusion).

On a shared input the emitter writes a partly shared layer as one op for the shared rows and one per
task for its private rows; ONNX Runtime pays per op, and each part then runs its own activation and
pooling. This pass rewrites the graph until nothing changes (channels on the layer axis throughout, :data:`onnxzip.graph.spaces.LAYER_AXIS`):

* **siblings**: Conv (or Gemm) ops on the same input -> one op over the filters stacked, then Split;
  Convs (given the shared prefix ``common``) only on a graph input with a shared block among them, since
  their stacked maps live until the last piece is read (Gemms, one number per channel, anywhere);
* **pushdown**: the same channel-wise op on every output of a Split -> the op on the Split's input
  (per-channel constants stacked), then Split;
* **concat**: a Concat of channels of one Split's input -> that input, a Slice or one Gather.

Each rewrite computes the same values and stores every weight once: it stacks only initializers
that belong to one op. Stacking tasks with *different* inputs into one grouped Conv was measured
slower than the separate ops on ONNX Runtime's CPU provider (docs/results.md), so it is not done.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph.export import export
from ..graph.spaces import LAYER_AXIS

#: ops that act on each channel alone (every input: the data, a per-channel or broadcast constant,
#: or another Split's matching output); Flatten is handled apart
CHANNELWISE = {"Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "HardSigmoid",
               "HardSwish", "Erf", "Gelu", "Identity", "Clip", "Neg", "Abs", "Exp", "Sqrt", "Add", "Sub", "Mul",
               "Div", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten"}


def fuse_branches(model: onnx.ModelProto, common: str | None = None) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Return the model with parallel branches fused (unchanged if nothing fuses), and the rewrite
    counts per rule. ``common``: the name prefix of tensors every task shares; stacked siblings put
    those between the first one's and the rest (two tasks: each task's channels one contiguous run)."""
    graph = gs.import_onnx(model)
    counts = {"siblings": 0, "pushdown": 0, "concat": 0}
    f = _Fuser(graph, common)
    rules = (("concat", f.concat), ("pushdown", f.pushdown), ("siblings", f.siblings))
    progress = True
    while progress:
        progress = False
        for name, rule in rules:
            if rule():
                counts[name] += 1
                graph.cleanup()
                progress = True
                break
    if not any(counts.values()):
        return model, counts
    graph.cleanup()
    graph.nodes = _output_order(graph)
    out = export(graph)
    del out.graph.value_info[:]  # (shapes are inferred again by the caller)
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, field, getattr(model, field))
    for field in ("input", "output"):  # (non-tensor outputs, such as ZipMap's, keep their declared types)
        del getattr(out.graph, field)[:]
        getattr(out.graph, field).extend(getattr(model.graph, field))
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    out.metadata_props.extend(model.metadata_props)
    return out, counts


def _output_order(graph: gs.Graph) -> list[gs.Node]:
    """The nodes in the order that computes the graph's outputs one after another, each node after
    its inputs (depth first): task by task, as the emitter wrote them. A level-by-level order would
    interleave the tasks, which ONNX Runtime's CPU provider runs measurably slower."""
    order, done = [], set()
    for out in graph.outputs:
        stack = [(out.inputs[0], False)] if out.inputs else []
        while stack:
            node, expanded = stack.pop()
            if id(node) in done:
                continue
            if expanded:
                done.add(id(node))
                order.append(node)
                continue
            stack.append((node, True))
            for t in reversed(node.inputs):
                if t.inputs and id(t.inputs[0]) not in done:
                    stack.append((t.inputs[0], False))
    return order


class _Edits:
    """What the rewrites share: fresh names, constants and nodes, channel Splits, and which channels
    of which tensor a tensor is (an output of a layer-axis Split, or a Concat of such)."""

    def __init__(self, graph: gs.Graph, common: str | None):
        self.g, self.common = graph, common
        self.opset = graph.opset
        self.outputs = {t.name for t in graph.outputs}
        self.n = 0

    # ------------------------------------------------------------------ helpers
    def _name(self, hint: str) -> str:
        self.n += 1
        return f"fused/{hint}.{self.n}"

    def _unique(self, name: str) -> str:
        taken = self.g.tensors()
        out, i = name, 1
        while out in taken:
            out, i = f"{name}_{i}", i + 1
        return out

    def _var(self, hint: str, shape: list | None = None) -> gs.Variable:
        return gs.Variable(self._name(hint), dtype=np.float32, shape=shape)

    def _const(self, array: np.ndarray, hint: str) -> gs.Constant:
        return gs.Constant(self._name(hint), np.ascontiguousarray(array))

    def _split(self, x: gs.Variable, sizes: list[int], outs: list[gs.Tensor]) -> None:
        """``outs`` become the channel slices of ``x`` (their producers are detached first)."""
        for t in outs:
            for node in list(t.inputs):
                node.outputs.clear()
        if self.opset >= 13:
            node = gs.Node("Split", self._name("split"), {"axis": LAYER_AXIS},
                           [x, self._const(np.asarray(sizes, np.int64), "sizes")], list(outs))
        else:
            node = gs.Node("Split", self._name("split"), {"axis": LAYER_AXIS, "split": list(sizes)}, [x], list(outs))
        self.g.nodes.append(node)

    def _node(self, op: str, attrs: dict, inputs: list, hint: str, shape: list | None = None) -> gs.Variable:
        out = self._var(hint, shape)
        self.g.nodes.append(gs.Node(op, self._name(hint + ".node"), attrs, inputs, [out]))
        return out

    def _sizes(self, node: gs.Node) -> list[int] | None:
        """Channel counts of an layer-axis Split's outputs, if static."""
        if node.op != "Split" or int(node.attrs.get("axis", 0)) != LAYER_AXIS:
            return None
        if len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
            return [int(v) for v in np.asarray(node.inputs[1].values).reshape(-1)]
        if "split" in node.attrs:
            return [int(v) for v in node.attrs["split"]]
        dims = [t.shape[LAYER_AXIS] if t.shape and len(t.shape) > LAYER_AXIS else None for t in node.outputs]
        return dims if all(isinstance(d, int) for d in dims) else None

    @staticmethod
    def _stacked(ts: list[gs.Tensor]) -> list | None:
        """The shape of tensors ``ts`` joined on the layer axis (None where unknown)."""
        if ts[0].shape is None or len(ts[0].shape) <= LAYER_AXIS:
            return None
        dims = [t.shape[LAYER_AXIS] if t.shape is not None and len(t.shape) > LAYER_AXIS else None for t in ts]
        shape = list(ts[0].shape)
        return shape[:LAYER_AXIS] + [sum(dims) if all(isinstance(d, int) for d in dims) else None] + \
            shape[LAYER_AXIS + 1:]

    def _selection(self, t: gs.Tensor) -> tuple[gs.Variable, np.ndarray] | None:
        """``t`` as channels ``idx`` of a source tensor: an output of an layer-axis Split, or a Concat of such."""
        if isinstance(t, gs.Constant) or len(t.inputs) != 1:
            return None
        node = t.inputs[0]
        sizes = self._sizes(node)
        if sizes is not None:
            i = node.outputs.index(t)
            start = sum(sizes[:i])
            return node.inputs[0], np.arange(start, start + sizes[i])
        if node.op == "Concat" and int(node.attrs.get("axis", 0)) == LAYER_AXIS and len(node.inputs) > 1:
            picks = [self._selection(x) for x in node.inputs]
            if all(p is not None for p in picks) and len({id(p[0]) for p in picks}) == 1:
                return picks[0][0], np.concatenate([p[1] for p in picks])
        return None

    def _source_channels(self, x: gs.Variable, idx: np.ndarray, hint: str) -> gs.Variable:
        """Channels ``idx`` of ``x``: ``x`` itself, a Slice, or a Gather."""
        total = x.shape[LAYER_AXIS] if x.shape and len(x.shape) > LAYER_AXIS else None
        if isinstance(total, int) and idx.size == total and np.array_equal(idx, np.arange(total)):
            return x
        if np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
            c = [self._const(np.asarray([v], np.int64), "slice") for v in (idx[0], idx[0] + idx.size, 1)]
            return self._node("Slice", {}, [x, c[0], c[1], c[2], c[2]], hint, self._picked(x, idx))
        return self._node("Gather", {"axis": LAYER_AXIS}, [x, self._const(idx.astype(np.int64), "idx")], hint,
                          self._picked(x, idx))

    @staticmethod
    def _picked(x: gs.Variable, idx: np.ndarray) -> list | None:
        return None if x.shape is None else [x.shape[0], int(idx.size), *x.shape[2:]]


class _Fuser(_Edits):
    """The rewrites: stacked siblings, channel-wise ops pushed above Splits, Concats of one tensor."""

    def _dense(self, node: gs.Node) -> tuple | None:
        """A stackable Conv/Gemm: (op, attributes, weight shape, number of constant inputs) when its
        weight and bias are constants that belong to it alone; else None."""
        if node.op not in ("Conv", "Gemm") or len(node.outputs) != 1:
            return None
        consts = node.inputs[1:]
        if not consts or not all(isinstance(c, gs.Constant) and len(c.outputs) == 1 for c in consts):
            return None
        w = consts[0]
        attrs = dict(node.attrs)
        if node.op == "Conv":
            if int(attrs.pop("group", 1)) != 1:
                return None
        else:
            if int(attrs.get("transA", 0)) or not int(attrs.get("transB", 0)) or \
                    float(attrs.get("alpha", 1.0)) != 1.0 or float(attrs.get("beta", 1.0)) != 1.0:
                return None
            if len(consts) > 1 and np.asarray(consts[1].values).size != w.shape[0]:
                return None
        return node.op, repr(sorted(attrs.items())), tuple(w.shape), len(consts)


    # ------------------------------------------------------------------ rules
    def siblings(self) -> bool:
        for x in list(self.g.tensors().values()):
            if isinstance(x, gs.Constant):
                continue
            groups = defaultdict(list)
            for node in x.outputs:
                key = self._dense(node)
                if key is not None and node.inputs[0] is x:
                    groups[(key[0], key[1], key[2][1:], key[3])].append(node)  # (bias or not: no zeros stored)
            for nodes in groups.values():
                common = [n for n in nodes if self.common and n.outputs[0].name.startswith(self.common)]
                if len(nodes) < 2 or (nodes[0].op == "Conv" and self.common and not (common and x in self.g.inputs)):
                    # Convs stack only on a graph input with a shared block among them: elsewhere the
                    # stacked maps and their Split pieces live longer (measured: 1.4-2.7x ONNX
                    # Runtime's activation memory on the sample CNN and ResNet pairs, for <= 4% latency)
                    continue
                own = [n for n in nodes if n not in common]
                # the first task's private rows, the shared ones, the others' (the emitted row blocks'
                # order, onnxzip.sharing.layout.row_blocks): with two tasks each one's channels are one slice
                nodes = own[:1] + common + own[1:]
                base = (common or own)[0]  # stacked weights are named after the shared block's
                consts = [gs.Constant(self._unique(f"{c.name}.stacked"),
                                      np.concatenate([np.asarray(n.inputs[j].values).reshape(
                                          (-1,) if j > 1 else n.inputs[j].shape) for n in nodes]))
                          for j, c in enumerate(base.inputs[1:], 1)]
                y = self._node(nodes[0].op, dict(nodes[0].attrs), [x, *consts],
                               "siblings", self._stacked([n.outputs[0] for n in nodes]))
                self._split(y, [int(n.inputs[1].shape[0]) for n in nodes], [n.outputs[0] for n in nodes])
                return True
        return False

    def pushdown(self) -> bool:
        for split in [n for n in self.g.nodes if n.op == "Split"]:
            sizes = self._sizes(split)
            if sizes is None or any(o.name in self.outputs or len(o.outputs) != 1 for o in split.outputs):
                continue
            users = [o.outputs[0] for o in split.outputs]
            first = users[0]
            if len({id(u) for u in users}) != len(users) or first.op not in CHANNELWISE or \
                    any(u.op != first.op or u.attrs != first.attrs or len(u.outputs) != 1 or
                        len(u.inputs) != len(first.inputs) for u in users):
                continue
            x = split.inputs[0]
            if x.shape is None:
                continue
            out_sizes = sizes
            if first.op == "Flatten":
                rest = x.shape[LAYER_AXIS + 1:]
                if int(first.attrs.get("axis", 1)) != LAYER_AXIS or not all(isinstance(d, int) for d in rest):
                    continue
                out_sizes = [s * int(np.prod(rest)) for s in sizes]
            slots = [self._joined(split, sizes, [u.inputs[j] for u in users], len(x.shape))
                     for j in range(len(first.inputs))]
            if any(slot is None for slot in slots):
                continue
            # (a Slice or Gather is built only now that every slot joins: a failed try leaves no node)
            inputs = [self._source_channels(*slot, "operand") if isinstance(slot, tuple) else slot for slot in slots]
            y = self._node(first.op, dict(first.attrs), inputs, "pushdown", self._stacked([u.outputs[0] for u in users]))
            self._split(y, out_sizes, [u.outputs[0] for u in users])
            return True
        return False

    def _joined(self, split: gs.Node, sizes: list[int], ins: list[gs.Tensor],
                rank: int) -> gs.Tensor | tuple[gs.Variable, np.ndarray] | None:
        """One input slot of the Split's users, joined: the Split's input, per-channel / broadcast
        constants, or (source, channels) of one other tensor (built by ``_source_channels``)."""
        if all(t is o for t, o in zip(ins, split.outputs)):
            return split.inputs[0]
        if all(t is ins[0] for t in ins) and not isinstance(ins[0], gs.Constant) and not ins[0].name:
            return ins[0]  # an omitted optional input
        if all(isinstance(t, gs.Constant) for t in ins):
            cs = [np.asarray(t.values) for t in ins]
            if any(c.ndim != cs[0].ndim for c in cs) or cs[0].ndim > rank:
                return None
            axis = cs[0].ndim - (rank - LAYER_AXIS)  # the constants' axis aligned with the channels, if any
            if axis < 0 or all(c.shape[axis] == 1 for c in cs):
                return ins[0] if all(np.array_equal(c, cs[0]) for c in cs) else None
            rest = [c.shape[:axis] + c.shape[axis + 1:] for c in cs]
            if all(c.shape[axis] == s for c, s in zip(cs, sizes)) and all(r == rest[0] for r in rest):
                return self._const(np.concatenate(cs, axis=axis), "c")
            return None
        picks = [self._selection(t) for t in ins]  # channels of one tensor: it, a Slice or a Gather of it
        if all(p is not None for p in picks) and len({id(p[0]) for p in picks}) == 1 and \
                all(p[1].size == n for p, n in zip(picks, sizes)):
            return picks[0][0], np.concatenate([p[1] for p in picks])
        return None

    def concat(self) -> bool:
        for node in self.g.nodes:
            if node.op != "Concat" or int(node.attrs.get("axis", 0)) != LAYER_AXIS or not node.outputs or \
                    node.outputs[0].name in self.outputs:
                continue
            pick = self._selection(node.outputs[0])
            if pick is None:
                continue
            src, idx = pick
            total = src.shape[LAYER_AXIS] if src.shape and len(src.shape) > LAYER_AXIS else None
            if not isinstance(total, int) or not idx.size:
                continue
            out = node.outputs[0]
            x = self._source_channels(src, idx, "concat")
            for user in list(out.outputs):
                for i, t in enumerate(user.inputs):
                    if t is out:
                        user.inputs[i] = x
            node.outputs.clear()
            return True
        return False
