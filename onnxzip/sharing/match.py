"""Choosing each group's shared slots: which neuron of every task goes into which slot.

Layers tied into one group (:mod:`onnxzip.graph.spaces`: residual joins) share one matching,
chosen when the group's first layer comes up from the summed costs of the group's layers whose
inputs are already available; the group's later layers follow it. ``COSTS`` names how pairs are
costed, ``ORDERS`` in which order three or more tasks are merged.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..calibrate.spool import Batches
from ..calibrate.stats import exact_rows
from ..errors import UsageError
from ..registry import Registry
from ..report.records import GroupChoice
from ..timing import phase
from .assign import pick
from .merge import match_tasks

if TYPE_CHECKING:
    from .loop import Context


@dataclass(frozen=True)
class Cost:
    """A way to cost neuron pairs. ``decide(ctx, group, live, sizes)`` sets the group's rows and
    slot costs in ``ctx.matchings``; ``same_samples``: every task must run the same calibration
    samples; ``tasks``: the number of tasks it can zip (None: any)."""

    decide: Callable[[Context, int, list[Batches], list[int]], None]
    same_samples: bool = False
    tasks: int | None = None


COSTS: Registry[Cost] = Registry("pairing cost")
#: ``orders(n_tasks) -> [task order, ...]``: the merge orders to try (the cheapest is kept)
ORDERS: Registry[Callable[[int], list[list[int]]]] = Registry("task order")


@ORDERS.register("given")
def _given(n_tasks: int) -> list[list[int]]:
    return [list(range(n_tasks))]


@ORDERS.register("auto")
def _every_starting_pair(n_tasks: int) -> list[list[int]]:
    if n_tasks <= 2:
        return _given(n_tasks)
    return [[a, b] + [t for t in range(n_tasks) if t not in (a, b)] for a, b in itertools.combinations(range(n_tasks), 2)]


def check_tasks(cost: str, n_tasks: int) -> None:
    """Raise :class:`UsageError` where the pairing cost cannot take ``n_tasks`` tasks."""
    tasks = COSTS.get(cost).tasks
    if tasks is not None and n_tasks != tasks:
        raise UsageError(f"{cost} matching zips {'two' if tasks == 2 else tasks} models")


def decide(ctx: Context, g: int, live: list[Batches]) -> None:
    """Choose group ``g``'s shared slots (:data:`COSTS` ``ctx.opts.cost``)."""
    m = ctx.matchings
    sizes = [ir.layers[m.groups[g][0]].neurons for ir in ctx.irs]
    if m.k[g] == 0:
        m.rows[g] = [np.arange(n) for n in sizes]
        return
    COSTS.get(ctx.opts.cost).decide(ctx, g, live, sizes)


def _by_hessian_costs(ctx: Context, g: int, live: list[Batches], sizes: list[int]) -> None:
    """MTZ: the summed Hessian pair costs of the group's available layers, matched optimally (or
    as ``ctx.opts.matching`` says) for every task order tried; the cheapest order is kept."""
    m, problems = ctx.matchings, ctx.problems
    k = m.k[g]
    members = []
    for li in m.groups[g]:
        if not m.decided(ctx.irs[0], li) or any(ir.layers[li].input not in lv for ir, lv in zip(ctx.irs, live)):
            continue
        p = problems.problem(li, live)
        blocks = problems.blocks(li, live)
        if p.offset is not None:  # each component a member: the costs add up
            members.extend(([x[j][:, :part.ns] for x in part.mats], [s for s, _ in part_blocks], ctx.loss_weights(li))
                           for part, part_blocks in zip(p.offset.parts, blocks) for j in range(part.count))
            continue
        members.append(([x[:, :p.ns] for x in p.mats], [s for s, _ in blocks], ctx.loss_weights(li)))
    orders = ORDERS.get(ctx.opts.task_order)(len(ctx.irs))
    started = time.perf_counter()
    with phase("matching"):
        results = [(match_tasks(members, k, ctx.opts.matching, o, m.units[g]), o) for o in orders]
    (rows, cost, method), order = min(results, key=lambda r: float(r[0][1].sum()))
    m.slot_costs[g] = np.sort(cost)
    m.orders[g] = GroupChoice([ctx.irs[t].name for t in order], len(members),
                              {"-".join(ctx.irs[t].name for t in o[:2]): float(c.sum()) for (_, c, _), o in results},
                              sizes, k, round(time.perf_counter() - started, 3), method)
    m.rows[g] = [np.concatenate([r, np.setdiff1d(np.arange(n), r)]).astype(np.int64) for r, n in zip(rows, sizes)]


def _by_correlation(ctx: Context, g: int, live: list[Batches], sizes: list[int]) -> None:
    """ZipIt!-style matching: pair the neurons whose outputs correlate best on the same inputs
    (both tasks run the same calibration samples; see :func:`onnxzip.tasks.prepare`)."""
    m = ctx.matchings
    li = m.groups[g][0]
    layers = [ir.layers[li] for ir in ctx.irs]
    mats = [ir.weights(layer) for ir, layer in zip(ctx.irs, layers)]
    sums: list = [0.0, 0.0, 0.0, 0.0, 0.0]  # sum y_a, y_b, y_a^2, y_b^2, y_a' y_b
    n = 0
    for xa, xb in zip(live[0].column(layers[0].input), live[1].column(layers[1].input)):
        ya, yb = (exact_rows(layer, x).astype(np.float64) @ w.reshape(w.shape[0], -1).T.astype(np.float64) + b
                  for layer, x, (w, b) in zip(layers, (xa, xb), mats))
        for i, v in enumerate((ya.sum(0), yb.sum(0), (ya ** 2).sum(0), (yb ** 2).sum(0), ya.T @ yb)):
            sums[i] = sums[i] + v
        n += ya.shape[0]
    mean_a, mean_b = sums[0] / n, sums[1] / n
    std_a = np.sqrt(np.maximum(sums[2] / n - mean_a ** 2, 0.0)) + 1e-12
    std_b = np.sqrt(np.maximum(sums[3] / n - mean_b ** 2, 0.0)) + 1e-12
    corr = (sums[4] / n - np.outer(mean_a, mean_b)) / np.outer(std_a, std_b)
    unit = m.units[g]
    ia, ib, _ = pick(ctx.opts.matching, 1.0 - corr, m.k[g], unit)
    order = np.argsort(1.0 - corr[ia, ib], kind="stable") if unit == 1 else np.arange(ia.size)
    m.slot_costs[g] = np.sort(1.0 - corr[ia, ib])
    m.rows[g] = [np.concatenate([r[order], np.setdiff1d(np.arange(size), r)]).astype(np.int64)
                 for r, size in ((ia, sizes[0]), (ib, sizes[1]))]


COSTS.add("mtz", Cost(_by_hessian_costs))
COSTS.add("correlation", Cost(_by_correlation, same_samples=True, tasks=2))
