"""Layer correspondence across tasks: same architecture, or a clear error at the first difference."""
from __future__ import annotations

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs
from networkx.algorithms.isomorphism import DiGraphMatcher

from .errors import MismatchError
from .ir import ModelIR, reorder


def _heads(ir: ModelIR) -> set[str]:
    """Private output layers and everything downstream of them (they may differ per task)."""
    names = {ir.layers[i].name for i in range(len(ir.layers)) if i not in ir.hidden}
    down = set(names)
    for name in names:
        down |= nx.descendants(ir.index, name)
    return down


def signature(ir: ModelIR, node: gs.Node, loose: bool) -> tuple:
    """What must agree between corresponding nodes: op, attributes, constant shapes (and integer
    constant values, e.g. Reshape targets). ``loose`` (heads and after) ignores output sizes."""
    consts = []
    for i, t in enumerate(node.inputs):
        if isinstance(t, gs.Constant):
            v = np.asarray(t.values)
            shape = v.shape[1:] if loose and i > 0 else v.shape
            value = tuple(v.reshape(-1).tolist()) if v.dtype.kind in "iub" and v.size <= 16 and not loose else None
            consts.append((i, shape, value))
    outputs = tuple(ir.outputs.index(t.name) if t.name in ir.outputs else -1 for t in node.outputs)
    return node.op, repr(sorted((k, repr(v)) for k, v in node.attrs.items())), tuple(consts), outputs


def describe(ir: ModelIR, node: gs.Node) -> str:
    w = next((t for t in node.inputs[1:] if isinstance(t, gs.Constant)), None)
    shape = f", weight {tuple(w.values.shape)}" if w is not None and node.op in ("Conv", "Gemm") else ""
    return f"{ir.source} node {node.name!r} ({node.op}{shape})"


def _sequence(ir: ModelIR) -> list[tuple]:
    loose = _heads(ir)
    pos = {n.name: i for i, n in enumerate(ir.graph.nodes)}
    inputs = {t.name: k for k, t in enumerate(ir.graph.inputs)}
    seq = []
    for n in ir.graph.nodes:
        wires = tuple(("in", inputs[t.name]) if t.name in inputs else (pos[t.inputs[0].name], t.inputs[0].outputs.index(t))
                      for t in n.inputs if not isinstance(t, gs.Constant) and t.name and (t.name in inputs or t.inputs))
        seq.append((signature(ir, n, n.name in loose), wires))
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
        order = [mapping[n.name] for n in irs[0].graph.nodes]
        out.append(reorder(ir, order))
    return out


def _isomorphism(a: ModelIR, b: ModelIR) -> dict[str, str] | None:
    """Node names of ``a`` -> ``b`` where the graphs match up to node order (VF2)."""
    def labelled(ir: ModelIR) -> nx.DiGraph:
        g = nx.DiGraph()
        loose = _heads(ir)
        for n in ir.graph.nodes:
            g.add_node(n.name, sig=signature(ir, n, n.name in loose))
        g.add_edges_from(ir.index.edges(data=True))
        return g
    ga, gb = labelled(a), labelled(b)
    if ga.number_of_nodes() != gb.number_of_nodes() or ga.number_of_edges() != gb.number_of_edges():
        return None
    matcher = DiGraphMatcher(ga, gb, node_match=lambda x, y: x["sig"] == y["sig"],
                             edge_match=lambda x, y: x.get("slot") == y.get("slot"))
    return dict(matcher.mapping) if matcher.is_isomorphic() else None


def _first_difference(a: ModelIR, b: ModelIR, sa: list[tuple], sb: list[tuple]) -> str:
    for i, (x, y) in enumerate(zip(sa, sb)):
        if x != y:
            na, nb = a.graph.nodes[i], b.graph.nodes[i]
            what = "connects differently" if x[0] == y[0] else "differs"
            return f"architectures differ at node {i}: {describe(a, na)} {what} from {describe(b, nb)}"
    longer, extra = (a, sa) if len(sa) > len(sb) else (b, sb)
    node = longer.graph.nodes[min(len(sa), len(sb))]
    return (f"architectures differ: {a.source} has {len(sa)} nodes, {b.source} {len(sb)}; "
            f"the first extra is {describe(longer, node)}")
