"""The zipped graph under construction: values held as channel parts, and a builder that stores each
shared weight once and builds identical nodes once."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from ..graph.spaces import ChannelSpace

#: the name prefix of initializers every task uses
SHARED = "shared"


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


def node_attrs(node: gs.Node) -> dict:
    """A graphsurgeon node's attributes as ``helper.make_node`` takes them (tensor attributes as protos)."""
    out = {}
    for k, v in node.attrs.items():
        if isinstance(v, gs.Constant):
            v = numpy_helper.from_array(np.asarray(v.values), k)
        out[k] = v
    return out
