"""Layer correspondence across tasks: same architecture, or a clear error at the first difference."""
from __future__ import annotations

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs
from networkx.algorithms.isomorphism import DiGraphMatcher

from ..errors import MismatchError
from .ir import ModelIR, reorder

_DEFAULTS = {"auto_pad": "NOTSET", "group": 1, "ceil_mode": 0, "storage_order": 0, "count_include_pad": 0}
#: Conv attributes that only say where the kernel is applied (how the spatial grid is sampled), not
#: what a neuron computes per position: tasks may differ in them (e.g. a text-line classifier that
#: downsamples only the height, stride (2, 1), where its document sibling uses (2, 2)). Each task's
#: graph is replayed with its own attributes, and its statistics come from its own patches.
_SPATIAL = frozenset({"strides", "pads", "dilations", "auto_pad"})


def _attrs(node: gs.Node) -> str:
    """Attributes with their defaults dropped (exporters differ in which defaults they write)."""
    out = []
    for k, v in sorted(node.attrs.items()):
        if isinstance(v, bytes):
            v = v.decode()
        if node.op == "Conv" and (k == "kernel_shape" or k in _SPATIAL):
            continue  # implied by the weight shape; spatial sampling may differ per task
        if node.domain == "ai.onnx.ml" and isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
            v = f"{len(v)} values"  # preprocessing constants (a Scaler's offset and scale) are data
        if _DEFAULTS.get(k, object()) == v or (k in ("strides", "dilations") and all(x == 1 for x in v)) or \
                (k == "pads" and all(x == 0 for x in v)):
            continue
        out.append((k, repr(v)))
    return repr(out)


def trunk(ir: ModelIR) -> list[gs.Node]:
    """The nodes that lead to a layer (layers included), in graph order: what must correspond.
    Everything else (after the heads, side outputs) belongs to each task alone."""
    layers = [layer.name for layer in ir.layers]
    keep = set(layers)
    for name in layers:
        keep |= nx.ancestors(ir.index, name)
    return [n for n in ir.graph.nodes if n.name in keep]


def _head_outputs(ir: ModelIR) -> dict[str, tuple]:
    """Per head layer, the graph outputs it reaches (tells heads apart)."""
    producers = {}
    for n in ir.graph.nodes:
        for t in n.outputs:
            if t.name in ir.outputs:
                producers[n.name] = ir.outputs.index(t.name)
    out = {}
    for i, layer in enumerate(ir.layers):
        if i not in ir.hidden:
            reach = nx.descendants(ir.index, layer.name) | {layer.name}
            out[layer.name] = tuple(sorted(producers[n] for n in reach if n in producers))
    return out


def signature(ir: ModelIR, node: gs.Node, heads: dict[str, tuple]) -> tuple:
    """What must agree between corresponding nodes: op, attributes, constant shapes (and integer
    constant values, e.g. Reshape targets). Heads may differ in their number of outputs."""
    loose = node.name in heads
    consts = []
    for i, t in enumerate(node.inputs):
        if isinstance(t, gs.Constant):
            v = np.asarray(t.values)
            shape = v.shape[1:] if loose and i > 0 else v.shape
            value = tuple(v.reshape(-1).tolist()) if v.dtype.kind in "iub" and v.size <= 16 else None
            consts.append((i, shape, value))
    return node.op, _attrs(node), tuple(consts), heads.get(node.name, ())


def describe(ir: ModelIR, node: gs.Node) -> str:
    w = next((t for t in node.inputs[1:] if isinstance(t, gs.Constant)), None)
    shape = f", weight {tuple(w.values.shape)}" if w is not None and node.op in ("Conv", "Gemm") else ""
    return f"{ir.source} node {node.name!r} ({node.op}{shape})"


def _sequence(ir: ModelIR) -> list[tuple]:
    nodes, heads = trunk(ir), _head_outputs(ir)
    pos = {n.name: i for i, n in enumerate(nodes)}
    inputs = {t.name: k for k, t in enumerate(ir.graph.inputs)}
    seq = []
    for n in nodes:
        wires = tuple(("in", inputs[t.name]) if t.name in inputs else (pos[t.inputs[0].name], t.inputs[0].outputs.index(t))
                      for t in n.inputs if not isinstance(t, gs.Constant) and t.name and (t.name in inputs or t.inputs))
        seq.append((signature(ir, n, heads), wires))
    return seq


def align(irs: list[ModelIR]) -> list[ModelIR]:
    """Check that every task has the first task's architecture and return the tasks with their
    nodes (and so their layers) in the first task's order.

    Raises:
        MismatchError: naming the first node that differs in each model.
    """
    ref = _sequence(irs[0])
    out = [irs[0]]
    for ir in irs[1:]:
        seq = _sequence(ir)
        if seq == ref:
            out.append(ir)
            continue
        mapping = _isomorphism(irs[0], ir)
        if mapping is None:
            raise MismatchError(_first_difference(irs[0], ir, ref, seq))
        order = [mapping[n.name] for n in trunk(irs[0])]
        rest = [n.name for n in ir.graph.nodes if n.name not in set(order)]
        out.append(reorder(ir, order + rest))
    return out


def _isomorphism(a: ModelIR, b: ModelIR) -> dict[str, str] | None:
    """Node names of ``a`` -> ``b`` where the graphs match up to node order (VF2)."""
    def labelled(ir: ModelIR) -> nx.DiGraph:
        nodes, heads = trunk(ir), _head_outputs(ir)
        g = nx.DiGraph()
        for n in nodes:
            g.add_node(n.name, sig=signature(ir, n, heads))
        g.add_edges_from((u, v, d) for u, v, d in ir.index.edges(data=True) if u in g and v in g)
        return g
    ga, gb = labelled(a), labelled(b)
    if ga.number_of_nodes() != gb.number_of_nodes() or ga.number_of_edges() != gb.number_of_edges():
        return None
    matcher = DiGraphMatcher(ga, gb, node_match=lambda x, y: x["sig"] == y["sig"],
                             edge_match=lambda x, y: x.get("slot") == y.get("slot"))
    return dict(matcher.mapping) if matcher.is_isomorphic() else None


def _how(x: tuple, y: tuple) -> str:
    """How two node signatures (:func:`signature`) differ, in words."""
    if x == y:
        return "connects differently from"
    if x[0] != y[0]:
        return "is another op than"
    parts = [f"{what} {u} against {v}" for what, u, v in (("attributes", x[1], y[1]), ("constant inputs", x[2], y[2]))
             if u != v] or ["outputs"]
    return f"differs in its {'; '.join(parts)} from"


def _first_difference(a: ModelIR, b: ModelIR, sa: list[tuple], sb: list[tuple]) -> str:
    ta, tb = trunk(a), trunk(b)
    for i, (x, y) in enumerate(zip(sa, sb)):
        if x != y:
            na, nb = ta[i], tb[i]
            return f"architectures differ at node {i}: {describe(a, na)} {_how(x[0], y[0])} {describe(b, nb)}"
    longer, nodes = (a, ta) if len(sa) > len(sb) else (b, tb)
    node = nodes[min(len(sa), len(sb))]
    return (f"architectures differ: {a.source} has {len(sa)} nodes, {b.source} {len(sb)}; "
            f"the first extra is {describe(longer, node)}")
