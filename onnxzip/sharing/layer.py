"""One layer's zip for every task: its shared rows merged (dense, in the offset basis, or slot by
slot for a depthwise follower), or a private layer (a head) kept or refit."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..calibrate.spool import Batches
from ..calibrate.stats import depthwise_hessians
from ..timing import phase
from .affine import apply_affine, fit_affine
from .layout import as_matrix
from .match import decide
from .merge import damp, merge_followers, merge_rows
from .plan import LayerZip
from .problem import WideRows

if TYPE_CHECKING:
    from .loop import Context

#: (per task weights in zipped order, cost per slot, predicted errors or None, column orders, ns,
#: per task the shared rows' scale and shift or None)
Merged = tuple[list[np.ndarray], np.ndarray, "list[float] | None", list[np.ndarray], int,
               "list[tuple[np.ndarray, np.ndarray]] | None"]


def zip_layer(ctx: Context, li: int, live: list[Batches]) -> LayerZip:
    """Zip hidden layer ``li``: its group's matching (chosen now if it is the group's first layer),
    then its shared rows merged."""
    irs, m, problems = ctx.irs, ctx.matchings, ctx.problems
    if li in irs[0].spaces.followers:
        return follow(ctx, li, live)
    g = m.group_of[li]
    if g not in m.rows:
        decide(ctx, g, live)
    k, rows = m.k[g], m.rows[g]
    offset = (k or problems.needs_refit(li, live)) and problems.offset(li)
    weights, costs, predicted, cols, ns, affine = (merge_offsets if offset else merge_dense)(ctx, li, rows, k, live)
    layer = irs[0].layers[li]
    weighted = li in irs[0].spaces.normalized and layer.kind == "dense"  # see Problems.sample_weights
    fraction = problems.fractions.get(li, 1.0)
    checkable = (k > 0 and problems.estimator.exact(layer) and not weighted and fraction == 1.0 and per_sample(layer, live[0])
                 and all(problems.inputs_unchanged(li, live)))
    problems.done(li)
    return LayerZip(li, k, ns, list(rows), cols, weights, costs, predicted=predicted, checkable=checkable,
                    rows_read=fraction, stat_rows=problems.rows_read.get(li, 0), affine=affine, stat_flops=problems.stat_flops.get(li, 0.0))


def per_sample(layer, live: Batches) -> bool:
    """Whether the layer reads one input per sample (the merge check measures per sample): not an
    embedding of position ids (1, tokens), spread over the batch after it."""
    return layer.kind != "embedding" or all(x.shape[:1] == (n,) for x, n in zip(live.column(layer.input), live.sizes))


def merge_dense(ctx: Context, li: int, rows: list[np.ndarray], k: int, live: list[Batches]) -> Merged:
    """Merge layer ``li``'s first ``k`` slots: per task the weights in zipped order, the cost per
    slot, the predicted errors (:func:`predicted_errors`), the column orders and ns."""
    problems = ctx.problems
    if k or problems.needs_refit(li, live):
        p = problems.problem(li, live)
        mats, cols, ns = p.mats, p.cols, p.ns
        f = ctx.loss_weights(li)
        with phase("merge"):
            w, privs, costs = merge_rows([x[r[:k]] for x, r in zip(mats, rows)], p.hs, ns, ctx.opts.compensate,
                                         None if f is None else [x[r[:k]] for x, r in zip(f, rows)],
                                         problems.blocks(li, live)) if k else (None, None, np.zeros(0))
    else:  # nothing shared: no statistics needed
        orders = [ctx.matchings.column_order(ir, li, t) for t, ir in enumerate(ctx.irs)]
        cols, ns = [o for o, _ in orders], orders[0][1]
        mats = [as_matrix(*ir.weights(ir.layers[li]))[:, o] for ir, o in zip(ctx.irs, cols)]
        w, privs, costs = None, None, np.zeros(0)
    weights = []
    for t, (x, r) in enumerate(zip(mats, rows)):
        z = x[r].copy()
        if k:
            z[:k, :ns] = w
            z[:k, ns:] = privs[t]
        weights.append(z)
    affine = None
    if k and ctx.opts.affine:
        affine = [per_task_affine(ctx, li, t, weights[t][:k], mats[t][rows[t][:k]], cols[t], ns)
                  for t in range(len(weights))]
        for t, (a, b) in enumerate(affine):
            weights[t][:k] = apply_affine(weights[t][:k], a, b, ns - 1)
    predicted = predicted_errors(ctx, li, weights, mats, rows, cols, k) if k else None
    return weights, costs, predicted, cols, ns, affine


def per_task_affine(ctx: Context, li: int, t: int, z: np.ndarray, m: np.ndarray, cols: np.ndarray,
                    ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Task ``t``'s scale and shift per shared row of layer ``li`` (:func:`onnxzip.sharing.affine.fit_affine`)
    against the rows' targets, under the task's undamped input statistic (zipped column order; the
    bias is column ``ns - 1``)."""
    raw = ctx.problems.raw(li, t)
    if isinstance(raw, WideRows):
        return fit_affine(None, raw.rows[:, cols], z, m, ns - 1)
    return fit_affine(raw[np.ix_(cols, cols)], None, z, m, ns - 1)


def merge_offsets(ctx: Context, li: int, rows: list[np.ndarray], k: int, live: list[Batches]) -> Merged:
    """:func:`merge_dense` for a per-channel conv, part by part in the offset basis."""
    p = ctx.problems.problem(li, live)
    problem = p.offset
    f = ctx.loss_weights(li)
    costs, predicted = np.zeros(k), np.zeros(len(ctx.irs))
    zipped = []
    for part, blocks in zip(problem.parts, ctx.problems.blocks(li, live)):
        n = part.count
        if k:
            with phase("merge"):
                w, privs, cost = merge_rows([x[:, r[:k]].reshape(n * k, -1) for x, r in zip(part.mats, rows)],
                                            part.hs, part.ns, ctx.opts.compensate,
                                            None if f is None else [np.tile(x[r[:k]], n) for x, r in zip(f, rows)],
                                            blocks)
            costs += cost.reshape(n, k).sum(axis=0)
        zs = []
        for t, (x, r) in enumerate(zip(part.mats, rows)):
            z = x[:, r]
            if k:
                z[:, :k, :part.ns] = w.reshape(n, k, -1)
                z[:, :k, part.ns:] = privs[t].reshape(n, k, -1)
                d = (z[:, :k] - x[:, r[:k]]).reshape(n * k, -1)  # d' H d = d' (H + lam I) d - lam d'd
                predicted[t] += max(0.0, float(((d @ part.hs[t]) * d).sum() - part.lam[t] * np.square(d).sum()))
            zs.append(z)
        zipped.append(zs)
    weights = [problem.to_zipped(z0[0], rest) for z0, rest in zip(*zipped)]
    return weights, costs, (list(predicted) if k else None), p.cols, p.ns, None  # (no affine in this basis)


def predicted_errors(ctx: Context, li: int, weights: list[np.ndarray], mats: list[np.ndarray],
                     rows: list[np.ndarray], cols: list[np.ndarray], k: int) -> list[float]:
    """Per task: sum over the shared rows of d' H d, d = merged row - its target, H the undamped
    statistic of the layer's input (zipped column order)."""
    out = []
    for t in range(len(ctx.irs)):
        raw = ctx.problems.raw(li, t)
        d = weights[t][:k] - mats[t][rows[t][:k]]
        if isinstance(raw, WideRows):
            out.append(float(np.square(d @ raw.rows[:, cols[t]].T).sum()) / raw.rows.shape[0])
            continue
        full = np.zeros_like(d)
        full[:, cols[t]] = d  # back to the statistic's column order (no reordered copy of H)
        out.append(max(0.0, float(((full @ raw) * full).sum())))  # (a PSD form: below 0 only by rounding)
    return out


def follow(ctx: Context, li: int, live: list[Batches]) -> LayerZip:
    """A depthwise conv: merge the neurons on each shared input channel slot."""
    irs, m = ctx.irs, ctx.matchings
    layer0 = irs[0].layers[li]
    space = irs[0].spaces.layout[layer0.input]
    slots: list[list[int]] = [[] for _ in irs]
    offset = 0
    for seg in space.segments:
        if seg.layer >= 0:
            g = m.group_of[seg.layer]
            for t in range(len(irs)):
                slots[t].extend(m.rows[g][t][:m.k[g]] + offset)
        offset += seg.count
    mats = [as_matrix(*ir.weights(ir.layers[li])) for ir in irs]
    weights = [x.copy() for x in mats]
    costs = np.zeros(0)
    if slots[0]:
        hs = []
        for t, ir in enumerate(irs):
            layer = ir.layers[li]
            with phase("statistics"):  # (a depthwise layer's per-channel statistics: timed with the rest)
                h = depthwise_hessians(layer, live[t].column(layer.input), ctx.opts.hessian)[np.asarray(slots[t])]
            hs.append(np.stack([damp(x, ctx.opts.damping) for x in h]))
        w, costs = merge_followers([x[np.asarray(s)] for x, s in zip(mats, slots)], hs)
        for t, s in enumerate(slots):
            weights[t][np.asarray(s)] = w
    d = layer0.fan_in
    ident = [np.arange(x.shape[0]) for x in mats]
    return LayerZip(li, len(slots[0]), d + 1, ident, [np.arange(d + 1)] * len(mats), weights, costs, follower=True)


def private_layer(ctx: Context, li: int, live: list[Batches] | None = None) -> LayerZip:
    """A layer nothing is shared in (a head): each task's own weights, columns in zipped order;
    with ``live`` (recovery), refit to reproduce the original pre-activations."""
    if live is not None and ctx.problems.needs_refit(li, live):
        p = ctx.problems.problem(li, live)
        mats, o = p.mats, p.offset
        if o is not None:
            mats = [o.to_zipped(z0[0], rest) for z0, rest in zip(o.parts[0].mats, o.parts[1].mats)]
        return LayerZip(li, 0, p.ns, [np.arange(x.shape[0]) for x in mats], p.cols, mats, np.zeros(0),
                        stat_flops=ctx.problems.stat_flops.get(li, 0.0))
    rows, cols, weights, ns = [], [], [], 0
    for t, ir in enumerate(ctx.irs):
        order, ns = ctx.matchings.column_order(ir, li, t)
        mat = as_matrix(*ir.weights(ir.layers[li]))
        rows.append(np.arange(mat.shape[0]))
        cols.append(order)
        weights.append(mat[:, order])
    return LayerZip(li, 0, ns, rows, cols, weights, np.zeros(0))
