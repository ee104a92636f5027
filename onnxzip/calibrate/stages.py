"""Run one task's network stage by stage through ONNX Runtime.

The graph is cut before each hidden layer. Stage ``j`` holds the nodes from cut ``j`` up to cut
``j + 1`` (the prefix before the first cut is stage 0; the last stage ends at the graph outputs).
Each stage becomes a small ONNX model whose inputs are the tensors alive at its start, so the
calibration set passes through every node exactly once while the layers below are being zipped.
Stages run batch by batch over :class:`~onnxzip.calibrate.spool.Batches` (in memory or spooled to disk).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph.ir import ModelIR, largest_tensor_bytes
from ..timing import phase
from . import runtime
from .spool import Batches

#: a stage batch holds at most this many bytes of the network's largest tensor (its memory: the
#: batch's inputs, outputs and ONNX Runtime's buffers are a few times that)
STAGE_BYTES = 64 << 20


class StagedNetwork:
    """One task's normalized network, cut before the layers ``cuts`` (indices into ``ir.layers``)."""

    def __init__(self, ir: ModelIR, cuts: list[int], device: str = "cpu", batch: int = 64) -> None:
        self.ir, self.device = ir, device
        # a model that fixes its batch size runs at that size; others in batches of at most ``batch``
        # samples and STAGE_BYTES of the network's largest tensor
        self.fixed = ir.fixed_batch
        self.batch = self.fixed or max(1, min(batch, STAGE_BYTES // max(largest_tensor_bytes(ir), 1)))
        nodes = late_order(ir.graph, {layer.name for layer in ir.layers})
        where = {n.name: i for i, n in enumerate(nodes)}
        self.bounds = [0] + [where[ir.layers[c].name] for c in cuts] + [len(nodes)]
        self.nodes = nodes
        self.live = [self._live_at(p) for p in self.bounds]
        self.live[-1] = ir.outputs

    def _live_at(self, pos: int) -> list[str]:
        """Tensors made before node ``pos`` (or graph inputs) and needed at or after it."""
        made = {t.name for t in self.ir.graph.inputs}
        for n in self.nodes[:pos]:
            made.update(t.name for t in n.outputs)
        need = {t.name for t in self.ir.graph.outputs}
        for n in self.nodes[pos:]:
            need.update(t.name for t in n.inputs if not isinstance(t, gs.Constant) and t.name)
        return sorted(made & need)

    def not_run(self, j: int) -> set[str]:
        """The names of the nodes of stage ``j`` and after."""
        return {n.name for n in self.nodes[self.bounds[j]:]}

    @property
    def stages(self) -> int:
        return len(self.bounds) - 1

    def stage_model(self, j: int, weights: dict[int, tuple[np.ndarray, np.ndarray]],
                    constants: dict[str, np.ndarray] | None = None, extra: list[str] = ()) -> onnx.ModelProto | None:
        """Stage ``j`` as a model, with the layers in ``weights`` (index -> (W, b)) and the named
        ``constants`` replaced, and the tensors in ``extra`` as further outputs.

        Returns None for an empty stage (its outputs are its inputs).
        """
        lo, hi = self.bounds[j], self.bounds[j + 1]
        if lo == hi:
            return None
        graph, tensors = self._copy_nodes(lo, hi)
        keep = {n.name for n in self.nodes[lo:hi]}
        for i, (w, b) in weights.items():
            layer = self.ir.layers[i]
            if layer.name in keep:
                for name, value in layer.stored(w, b):
                    tensors[name].values = np.asarray(value, tensors[name].values.dtype)
        for name, value in (constants or {}).items():
            if name in tensors:
                tensors[name].values = np.asarray(value, tensors[name].values.dtype)
        graph.inputs = [_as_input(tensors[name]) for name in self.live[j] if name in tensors]
        graph.outputs = [tensors[name] for name in self.produced(j) + [e for e in extra if e not in self.produced(j)]]
        for t in graph.outputs:
            t.dtype = t.dtype or np.float32
        graph.cleanup(remove_unused_graph_inputs=False)
        return self.ir.export(graph)

    def _copy_nodes(self, lo: int, hi: int) -> tuple[gs.Graph, dict[str, gs.Tensor]]:
        """A graph of copies of nodes ``lo:hi`` and of the tensors they touch (copying the whole
        graph for every stage made zipping quadratic in the network's depth)."""
        tensors: dict[str, gs.Tensor] = {}

        def own(t: gs.Tensor) -> gs.Tensor:
            if t.name not in tensors:
                tensors[t.name] = t.copy()
            return tensors[t.name]

        nodes = [n.copy(inputs=[own(t) for t in n.inputs], outputs=[own(t) for t in n.outputs])
                 for n in self.nodes[lo:hi]]
        graph = gs.Graph(nodes=nodes, opset=self.ir.graph.opset, import_domains=self.ir.graph.import_domains)
        return graph, tensors

    def produced(self, j: int) -> list[str]:
        """The tensors alive after stage ``j`` that it computes (the rest are carried through)."""
        return [name for name in self.live[j + 1] if name not in self.live[j]]

    def stream(self, j: int, live: Batches, weights: dict[int, tuple[np.ndarray, np.ndarray]],
               constants: dict[str, np.ndarray] | None, outputs: list[str]) -> Iterator[dict[str, np.ndarray]]:
        """Run stage ``j`` over ``live`` (the tensors alive at its start) batch by batch; yields the
        ``outputs`` (tensors made inside the stage) of each batch."""
        with phase("forward"):  # (building the stage is part of running it)
            model = self.stage_model(j, weights, constants, [o for o in outputs if o not in self.produced(j)])
            sess = None if model is None else runtime.session(model, self.device, built=True)
        names = [] if sess is None else [i.name for i in sess.get_inputs()]
        for i in range(len(live)):
            if sess is None or not outputs:
                yield {}
                continue
            feeds = live.batch(i, names)
            with phase("forward"):
                if self.fixed is None or live.sizes[i] == self.fixed:  # one batch, one run (a stage's
                    got = dict(zip(outputs, sess.run(outputs, feeds)))  # inputs need not be batch-major)
                else:  # the last, partial batch of a model that fixes its batch size: padded
                    got = runtime.run(sess, feeds, outputs, self.batch, "a stage", built=True)
            yield got  # (outside the phase: the consumer's work is its own)

    def run_stage(self, j: int, live: Batches, weights: dict[int, tuple[np.ndarray, np.ndarray]],
                  constants: dict[str, np.ndarray] | None = None) -> Batches:
        """Stage ``j`` over all samples of ``live``: the tensors alive after it, batch by batch (the
        ones it does not compute are carried over, not copied)."""
        out = Batches(live.spool)
        for i, got in enumerate(self.stream(j, live, weights, constants, self.produced(j))):
            self._keep(j, out, live, i, got)
        return out

    def _keep(self, j: int, out: Batches, source: Batches, i: int, got: dict[str, np.ndarray]) -> None:
        """Append batch ``i`` of stage ``j``'s run over ``source`` to ``out``: the tensors it made
        (from ``got``) and the ones it carries over (shared with ``source``, not copied)."""
        made, raw = self.produced(j), source.raw(i)
        with phase("forward"):  # (spooling the stage's outputs too)
            out.append(source.sizes[i], {k: got[k] for k in made},
                       {k: raw[k] for k in self.live[j + 1] if k not in made})

    def run_pair(self, j: int, original: Batches, live: Batches | None,
                 weights: dict[int, tuple[np.ndarray, np.ndarray]], constants: dict[str, np.ndarray] | None,
                 probe: str | None = None, neurons: int = 1) -> tuple[Batches, Batches, tuple[float, float] | None]:
        """Stage ``j`` of the original network (over ``original``) and of the zipped one (over
        ``live`` with ``weights`` and ``constants``; None: the zipped stage is the original one,
        whose run is reused) side by side, batch by batch.

        Returns:
            both networks' tensors after the stage, and for ``probe`` (a tensor made in the stage,
            a layer's pre-activation with ``neurons`` channels): the mean over samples and
            positions of the squared difference (zipped - original) summed over channels, and the
            same of the original's squares (float64 sums of float32 products per batch).
        """
        made = self.produced(j)
        asked = made + ([probe] if probe and probe not in made else [])
        runs = [(original, self.stream(j, original, {}, None, asked), Batches(original.spool))]
        if live is not None:
            runs.append((live, self.stream(j, live, weights, constants, asked), Batches(live.spool)))
        err = sig = 0.0
        for i, gots in enumerate(zip(*(stream for _, stream, _ in runs))):
            for (source, _, out), got in zip(runs, gots):
                self._keep(j, out, source, i, got)
            if probe:
                with phase("layer check"):
                    o = np.asarray(gots[0][probe]).ravel()
                    d = np.asarray(gots[-1][probe]).ravel() - o  # (float32; exact where the two are close)
                    positions = max(1, o.size // max(original.sizes[i], 1) // neurons)
                    err += float(np.dot(d, d)) / positions
                    sig += float(np.dot(o, o)) / positions
        measured = None if not probe else (err / max(original.samples, 1), sig / max(original.samples, 1))
        return runs[0][2], runs[-1][2], measured

    def batchnorms(self, j: int, zipped: dict[str, object]) -> list:
        """The BatchNormalization nodes in stage ``j`` whose input carries zipped channels."""
        lo, hi = self.bounds[j], self.bounds[j + 1]
        return [n for n in self.nodes[lo:hi] if n.op == "BatchNormalization" and n.inputs[0].name in zipped]


def late_order(graph: gs.Graph, layers: set[str]) -> list[gs.Node]:
    """The graph's nodes (topologically sorted) with every node that reads only graph inputs and
    constants, or such nodes' outputs, moved to just before its first reader (``layers`` stay where
    they are, so the cuts keep their order): a class token spread
    over the batch runs in the stage that joins it, after the layers before it are zipped (its
    constant may be merged then: :mod:`onnxzip.sharing.constants`)."""
    inputs = {t.name for t in graph.inputs}
    pending: dict[str, gs.Node] = {}  # tensor -> the deferred node that makes it
    out: list[gs.Node] = []
    placed: set[str] = set()

    def place(node: gs.Node) -> None:
        if node.name in placed:
            return
        placed.add(node.name)
        for t in node.inputs:
            if t.name in pending:
                place(pending[t.name])
        out.append(node)

    for node in graph.nodes:
        ins = [t for t in node.inputs if not isinstance(t, gs.Constant) and t.name]
        if node.name not in layers and all(t.name in inputs or t.name in pending for t in ins) and \
                not any(t in graph.outputs for t in node.outputs):
            for t in node.outputs:
                pending[t.name] = node
            continue
        place(node)
    for node in pending.values():
        place(node)
    return out


def _as_input(t: gs.Tensor) -> gs.Tensor:
    """Cut ``t`` from its producer so that it can be a stage input."""
    t.inputs.clear()
    if t.dtype is None:
        t.dtype = np.float32
    return t
