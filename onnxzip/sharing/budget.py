"""Automatic budgets: each group's predicted slot costs from one pass over the original networks,
and the parameters one more shared neuron saves."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..calibrate.spool import Batches, Spool
from ..calibrate.stages import StagedNetwork
from ..graph.ir import ModelIR
from ..graph.spaces import ALIGNED
from ..report.records import LossScale
from .layout import input_segments, whole_units
from .loop import Context, samples_of
from .match import decide
from .plan import Budget, allocate

if TYPE_CHECKING:
    from ..options import ZipOptions


def saving_model(irs: list[ModelIR], groups: list[list[int]], affine: bool = False
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """A function k (per group) -> parameters saved by sharing one more neuron in each group.

    Sharing neuron slot s of group g stores, once instead of once per task, each member layer's
    shared-input weights and bias, the consumers' weights on that channel from their shared rows,
    and the depthwise filters that follow it. With ``affine``, each member layer's shared neuron
    costs a scale and a shift per task (counted for every member: at most what is stored).
    """
    ir, n_extra = irs[0], len(irs) - 1
    group_of = {i: g for g, m in enumerate(groups) for i in m}
    inputs = {i: input_segments(ir, ir.layers[i], group_of) for g in groups for i in g}
    consumers = [(group_of[i], g, pc) for i, segs in inputs.items() for g, _, pc in segs if g >= 0]
    followers = [(g, ir.layers[i].kernel + 1) for i in ir.spaces.followers
                 for g, _, _ in input_segments(ir, ir.layers[i], group_of) if g >= 0]

    def saving(k: np.ndarray) -> np.ndarray:
        out = np.zeros(len(groups))
        for i, segs in inputs.items():
            cols = sum(n * pc if g == ALIGNED else (k[g] * pc if g >= 0 else 0) for g, n, pc in segs)
            bias = 0 if ir.layers[i].kind == "embedding" else 1  # (an embedding stores no bias)
            out[group_of[i]] += cols + bias - (2 * len(irs) / n_extra if affine else 0)
        for reader, source, pc in consumers:
            out[source] += k[reader] * pc
        for source, size in followers:
            out[source] += size
        return n_extra * out

    return saving


def predict_costs(irs: list[ModelIR], data: list[dict[str, np.ndarray]], fisher, opts: ZipOptions
                  ) -> list[np.ndarray]:
    """Every group's slot costs if everything were shared, on the original networks (one pass)."""
    ctx = Context.new(irs, 1.0, replace(opts, recover=False, cost="mtz"), fisher, samples_of(data))
    m = ctx.matchings
    hidden = irs[0].hidden
    nets = [StagedNetwork(ir, hidden, opts.device, opts.batch_size) for ir in irs]
    with Spool() as spool:
        live = [net.run_stage(0, Batches.of(d, net.batch, spool), {}) for net, d in zip(nets, data)]
        for j, li in enumerate(hidden):
            g = m.group_of.get(li)
            if g is not None and g not in m.rows:
                decide(ctx, g, live)
            ctx.problems.forget()
            old, live = live, [net.run_stage(j + 1, lv, {}) for net, lv in zip(nets, live)]
            for b in old:
                b.drop()
    return [m.slot_costs.get(g, np.zeros(0)) for g in range(len(m.groups))]


#: the fitted power of :class:`LossScale` stays in this range (a few zips' noise, not a law)
POWER_RANGE = (0.25, 4.0)


def fit_loss_scale(points: list[tuple[float, float]]) -> LossScale | None:
    """``loss = scale * cost ** power`` through (predicted cost, measured loss) points, least squares
    in log space over the points where both are positive; one distinct cost fits power 1. None
    without such a point."""
    pts = np.asarray([(c, m) for c, m in points if c > 0 and m > 0], np.float64).reshape(-1, 2)
    if not len(pts):
        return None
    x, y = np.log(pts[:, 0]), np.log(pts[:, 1])
    power = 1.0
    if np.ptp(x) > 1e-9:
        power = float(np.clip(np.polyfit(x, y, 1)[0], *POWER_RANGE))
    return LossScale(float(np.exp(np.mean(y - power * x))), power, len(pts))


class BudgetPlanner:
    """Predicted slot costs of every group from one pass over the original networks, turned into
    shared counts for any :class:`~onnxzip.sharing.plan.Budget` (so backing off needs no second pass)."""

    def __init__(self, irs: list[ModelIR], data: list[dict[str, np.ndarray]], fisher, opts: ZipOptions) -> None:
        self.costs = predict_costs(irs, data, fisher, opts)
        self.saving = saving_model(irs, irs[0].spaces.groups, opts.affine)
        self.units = [irs[0].spaces.unit(g[0]) for g in irs[0].spaces.groups]
        layers = sum(int(np.prod(ir.layers[i].shape)) + ir.layers[i].neurons for ir in irs for i in range(len(ir.layers)))
        # (the files' parameters where known, as the report counts them: normalization adds zero biases
        # that the zipped graph leaves out again)
        self.total = sum(ir.file_params[0] for ir in irs) if all(ir.file_params for ir in irs) else layers

    def allocate(self, budget: Budget) -> tuple[list[int], float]:
        """Shared counts per group (whole heads where heads are tied) and their predicted total cost."""
        counts, _ = allocate(self.costs, self.saving, self.total, budget)
        counts = whole_units(counts, self.units, up=budget.target_params is not None)  # (a target: reached)
        return counts, self.cost_of(counts)

    def cost_of(self, counts: list[int]) -> float:
        """The predicted cost of sharing ``counts`` (each group's cheapest slots, summed)."""
        return float(sum(c[:k].sum() for c, k in zip(self.costs, counts)))

    def kept(self, counts: list[int]) -> float:
        """The predicted parameters kept at ``counts`` (the savings summed one neuron at a time, all
        groups growing together)."""
        k = np.zeros(len(counts), dtype=np.int64)
        goal = np.asarray(counts, dtype=np.int64)
        kept = float(self.total)
        while (k < goal).any():
            grow = k < goal
            kept -= float(self.saving(k)[grow].sum())  # (one more in each growing group: a close path)
            k[grow] += 1
        return kept

    def uniform(self, target_params: float) -> list[int]:
        """The counts of the smallest uniform share (one fraction of every group's neurons) whose
        predicted parameters kept reach ``target_params`` (all shared if none does)."""
        sizes = [len(c) for c in self.costs]

        def counts(f: float) -> list[int]:
            return whole_units([int(round(f * n)) for n in sizes], self.units)

        lo, hi = 0.0, 1.0
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.kept(counts(mid)) > target_params * self.total else (lo, mid)
        return counts(hi)
