"""The bottom-up layer loop: at each cut, zip the layer (statistics -> costs -> matching -> merge ->
recovery), re-estimate kept BatchNorms, and run the next stage of every task's zipped network and
of its original alongside.

Every task's network is run stage by stage (:mod:`onnxzip.calibrate.stages`) with the layers already
zipped in place, so the Hessians of layer ``l`` come from the network as zipped below ``l`` and each
node sees the calibration set once. The rows and columns of every layer are in the zipped order of
:mod:`onnxzip.sharing.layout`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from ..calibrate.fisher import loss_statistics
from ..calibrate.spool import Batches, Spool
from ..calibrate.stages import StagedNetwork
from ..errors import UsageError
from ..graph.ir import ModelIR, same_inputs
from ..timing import release_memory
from .constants import merge_constants
from .layer import private_layer, zip_layer
from .layout import Matchings, effective, group_name
from .match import check_tasks
from .plan import LayerZip, ZipPlan, counts_given, shared_counts
from .problem import Problems
from .recover import changes, restat_batchnorms

if TYPE_CHECKING:
    from ..options import ZipOptions

log = logging.getLogger(__name__)
#: the original networks' outputs are kept for this many calibration samples (the first ones): the
#: float noise of the normalized graph against the original file (:func:`onnxzip.check.verify.float_noise`)
NOISE_SAMPLES = 64

Fisher = list[dict[int, np.ndarray]]  # per task: layer -> (neurons,) loss weights


@dataclass
class Context:
    """What every step of the loop reads: the tasks, the options, the loss weights (None: costs in
    pre-activation units), the matchings chosen so far and the problems at the current cut."""

    irs: list[ModelIR]
    opts: ZipOptions
    fisher: Fisher | None
    matchings: Matchings
    problems: Problems
    one_input: bool = False  # the tasks share their inputs (a fully shared stream can be computed once)

    @classmethod
    def new(cls, irs: list[ModelIR], share, opts: ZipOptions, fisher: Fisher | None, samples: int) -> Context:
        """``share``: a fraction, one per group, or :class:`onnxzip.sharing.plan.Counts` (a budget's)."""
        if len(irs) < 2:
            raise UsageError("give at least two models")
        check_tasks(opts.cost, len(irs))
        groups = irs[0].spaces.groups
        names = [group_name(irs[0], g) for g in groups]
        sizes = [min(ir.layers[g[0]].neurons for ir in irs) for g in groups]
        matchings = Matchings(groups, list(share) if counts_given(share) else shared_counts(share, sizes, names),
                              units=[irs[0].spaces.unit(g[0]) for g in groups])
        return cls(irs, opts, fisher, matchings, Problems(irs, opts, matchings, samples),
                   not opts.separate_inputs and same_inputs(irs))

    def loss_weights(self, li: int) -> list[np.ndarray] | None:
        """Per task, layer ``li``'s per-neuron loss weights, if loss-aware."""
        if self.fisher is None or any(li not in f for f in self.fisher):
            return None
        return [f[li] for f in self.fisher]


@dataclass
class Cut:
    """The loop's position: per task the live tensors of the zipped and of the original network,
    the zipped layer of the stage about to run (original order, float32: :func:`effective`),
    re-estimated BatchNorm statistics, and measurements."""

    live: list[Batches]
    reference: list[Batches]
    eff: list[dict[int, tuple[np.ndarray, np.ndarray]]]
    constants: list[dict[str, np.ndarray]]
    zips: dict[int, LayerZip] = field(default_factory=dict)
    measured: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    merged: set[str] = field(default_factory=set)  # nodes whose per-channel constants were merged


def samples_of(data: list[dict[str, np.ndarray]]) -> int:
    """The fewest calibration samples of any task."""
    return min(next(iter(d.values())).shape[0] for d in data)


def zip_tasks(irs: list[ModelIR], data: list[dict[str, np.ndarray]], share, opts: ZipOptions, *,
              labels: list | None = None, fisher: Fisher | None = None,
              outputs: list[dict[str, np.ndarray]] | None = None,
              progress: Callable[..., Iterable] = lambda it, desc, uneven=False: it) -> ZipPlan:
    """Zip aligned tasks layer by layer.

    Args:
        irs: the tasks (aligned: same layers in the same order).
        data: per task, the calibration arrays by input name.
        share: fraction of each group's neurons to share (float or one per group), or neuron counts
            per group as :class:`onnxzip.sharing.plan.Counts` (a budget's).
        opts: the options; ``opts.recover`` refits every layer's targets (and the heads) to reproduce
            the original pre-activations (the original networks run alongside either way: every
            hidden layer's zipped pre-activation is measured against the original's).
        labels: per task, class labels of the calibration samples (the empirical Fisher) or None.
        fisher: the loss weights when already computed (:func:`loss_statistics`); else computed here
            when ``opts.loss_aware``, seeded by ``outputs`` (per task the originals' outputs on ``data``).
    """
    hidden = irs[0].hidden
    nothing_shared = not np.any(np.asarray(share, dtype=float) > 0)
    if fisher is None and opts.loss_aware and not nothing_shared:
        fisher = loss_statistics(irs, data, labels, opts.device, outputs, progress)
    ctx = Context.new(irs, share, opts, fisher, samples_of(data))
    heads = [i for i in range(len(irs[0].layers)) if i not in hidden and i not in irs[0].spaces.plain]
    cuts = sorted(hidden + heads) if opts.recover else hidden
    nets = [StagedNetwork(ir, cuts, opts.device, opts.batch_size) for ir in irs]
    with Spool() as spool:
        live = [net.run_stage(0, Batches.of(d, net.batch, spool), {}) for net, d in zip(nets, data)]
        cut = Cut(live, list(live), [{} for _ in irs], [{} for _ in irs])
        for j, li in enumerate(progress(cuts, "zipping layers", True)):
            step(ctx, nets, cut, j, li)
        ctx.problems.warn_few_rows()
        zipped = [{o: lv.array(o) for o in ir.outputs} for ir, lv in zip(irs, cut.live)]
        originals = [{o: x[:NOISE_SAMPLES] for o in ir.outputs
                      if isinstance(x := ref.array(o), np.ndarray) and x.dtype.kind == "f"}
                     for ir, ref in zip(irs, cut.reference)]
    for li in range(len(irs[0].layers)):
        if li not in cut.zips and li not in irs[0].spaces.plain:
            cut.zips[li] = private_layer(ctx, li)
    return ZipPlan(cut.zips, hidden, zipped, ctx.matchings.groups, ctx.matchings.orders, loss_aware=fisher is not None,
                   constants=cut.constants, measured=cut.measured, originals=originals)


def step(ctx: Context, nets: list[StagedNetwork], cut: Cut, j: int, li: int) -> None:
    """Zip layer ``li`` (cut ``j``), then run stage ``j + 1`` of every zipped and original network."""
    irs, hidden = ctx.irs, ctx.irs[0].hidden
    started = time.perf_counter()
    ctx.problems.at_cut(cut.reference)
    g = ctx.matchings.group_of.get(li)
    fresh = li in hidden and g is not None and g not in ctx.matchings.rows
    z = zip_layer(ctx, li, cut.live) if li in hidden else private_layer(ctx, li, cut.live)
    merged = merge_constants(irs, ctx.matchings, g, cut.constants, nets[0].not_run(j + 1)) \
        if fresh and ctx.one_input else set()
    cut.merged |= merged
    log.info("layer %s: %d of %d neurons shared (%.2f s)", irs[0].layers[li].name, z.shared, z.neurons,
             time.perf_counter() - started)
    cut.zips[li] = z
    for t, ir in enumerate(irs):
        cut.eff[t][li] = effective(z, t, ir.layers[li])
    bns = [n for n in nets[0].batchnorms(j + 1, irs[0].spaces.layout) if n.name not in cut.merged] \
        if ctx.opts.recover else []  # (a merged BatchNorm keeps its merged statistics: one for every task)
    if bns:
        restat_batchnorms(nets, irs, j + 1, bns, cut.live, cut.reference, cut.eff, cut.constants)
    old = cut.live + cut.reference
    pairs = [net.run_pair(j + 1, ref, None if lv is ref and not merged and not changes(ir, li, cut.eff[t]) else lv,
                          cut.eff[t],
                          cut.constants[t], ir.layers[li].output if li in hidden else None, ir.layers[li].neurons)
             for t, (net, ir, lv, ref) in enumerate(zip(nets, irs, cut.live, cut.reference))]
    cut.reference, cut.live = [r for r, _, _ in pairs], [lv for _, lv, _ in pairs]
    if li in hidden:
        cut.measured[li] = [m for _, _, m in pairs]
    for b in {id(b): b for b in old}.values():  # each stage's input, once, now that both ran
        b.drop()
    for eff in cut.eff:  # (a layer's node is in the stage after its cut only: its zipped weights are in the plan)
        eff.pop(li, None)
    release_memory()  # (the stage sessions and their batches: not resident into the next cut)
