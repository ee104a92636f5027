"""Each layer's problem for the merge: its input statistics, targets and damped Hessians in zipped
column order, and their Schur blocks, computed once per layer and dropped once it is zipped.

A statistic is one of three forms: a dense (fan_in + 1)^2 matrix, a wide dense layer's input rows
(:class:`WideRows`: low rank, :mod:`onnxzip.sharing.lowrank`) or a per-channel conv's blocks in
the offset basis (:class:`OffsetProblem`, :mod:`onnxzip.sharing.offsets`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy.linalg import cho_solve

from ..calibrate.spool import Batches
from ..calibrate.stats import HESSIANS, cross_moments, layer_hessian, normalized_weights, row_count, row_fraction
from ..errors import UsageError
from ..graph.ir import Layer, ModelIR
from ..timing import phase
from . import offsets
from .layout import Matchings, as_matrix, channel_order
from .lowrank import basis, wide_blocks, woodbury_refit
from .merge import cholesky, damp, damping_of, relative_damping, task_blocks

if TYPE_CHECKING:
    from ..options import ZipOptions

log = logging.getLogger(__name__)

#: a dense layer with more inputs than this, seen on fewer samples than it has inputs, keeps its
#: statistic as the input rows (H = R'R / n: low rank, :mod:`onnxzip.sharing.lowrank`), never as d x d
LOWRANK_MIN = 4096
#: (d + 1)^2 float64 matrices a dense statistic needs at once per task (H, G, damped, reordered, blocks)
HESSIAN_COPIES = 6


def available_memory() -> int:
    """This machine's physical memory in bytes."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def is_wide(layer: Layer, samples: int) -> bool:
    """Whether ``layer``'s statistic is kept as its input rows (see ``LOWRANK_MIN``)."""
    return layer.kind == "dense" and layer.fan_in + 1 > LOWRANK_MIN and samples < layer.fan_in + 1


@dataclass
class WideRows:
    """A wide dense layer's statistic: H = rows' rows / n (and G = rows' ref / n when recovering)."""

    rows: np.ndarray  # (n, fan_in + 1) float64, bias column last (samples weighted by sqrt(weight))
    ref: np.ndarray | None = None  # the original network's rows for the same samples
    lam: float = 0.0  # the damping, once damped

    def damping(self, rel: float) -> float:
        """``rel`` times the mean diagonal of H (as :func:`onnxzip.sharing.merge.damping_of`)."""
        return relative_damping(float(np.square(self.rows).sum()) / self.rows.size, rel)


@dataclass
class OffsetPart:
    """``count`` components of a per-channel conv's problem in the offset basis that share one
    matrix per task: rows (count, n, d) and damped Hessians (d, d), zipped column order."""

    count: int
    ns: int
    mats: list[np.ndarray] = field(default_factory=list)
    hs: list[np.ndarray] = field(default_factory=list)
    lam: list[float] = field(default_factory=list)  # per task, the damping in ``hs``


@dataclass
class OffsetProblem:
    """A per-channel conv's problem (:mod:`onnxzip.sharing.offsets`): component 0 with the bias, columns
    ``[shared channels, bias | private channels]``, and components 1 .. K-1, ``[shared | private]``."""

    kernel: int
    cs: int  # shared channels
    parts: list[OffsetPart]

    def to_zipped(self, z0: np.ndarray, rest: np.ndarray) -> np.ndarray:
        """Component rows (n, C + 1) and (K - 1, n, C) back to weight rows (n, C K + 1) in zipped
        column order (``[shared channels x offsets, bias | private channels x offsets]``)."""
        cs, k = self.cs, self.kernel
        w = offsets.join(np.concatenate([z0[:, :cs], z0[:, cs + 1:], z0[:, cs:cs + 1]], axis=1), rest, k)
        return np.concatenate([w[:, :cs * k], w[:, -1:], w[:, cs * k:-1]], axis=1)


@dataclass
class LayerProblem:
    """One layer's problem, every task's part in zipped column order.

    ``mats``: per task (n, d + 1) targets (the refit weights when recovering); ``hs``: per task the
    damped statistic ((d + 1)^2 or :class:`WideRows`); ``cols``: per task the column order; ``ns``.
    A per-channel conv's problem is ``offset`` instead (``mats`` and ``hs`` empty).
    """

    mats: list[np.ndarray]
    hs: list
    cols: list[np.ndarray]
    ns: int
    offset: OffsetProblem | None = None


def input_rows(batches: Batches, name: str, weights: np.ndarray | None) -> np.ndarray:
    """A dense layer's input over all samples as rows (n, fan_in + 1) float64 with the bias 1 last;
    with per-sample ``weights`` (mean 1), each row times sqrt(weight)."""
    rows = np.concatenate([np.asarray(x, np.float64).reshape(x.shape[0], -1) for x in batches.column(name)])
    rows = np.hstack([rows, np.ones((rows.shape[0], 1))])
    return rows if weights is None else rows * np.sqrt(weights)[:, None]


def refit(a: np.ndarray, h: np.ndarray, g: np.ndarray, lam: float) -> np.ndarray:
    """Least-squares refit of the rows ``a`` (n, d) so that the zipped input reproduces the original
    pre-activations, regularized toward ``a`` itself: argmin_w E[(w.x - a.x_ref)^2] + lam |w - a|^2
    = (H + lam I)^-1 (G a + lam a), with ``h`` = H + lam I already damped and G the cross moment.

    Where the input is unchanged (G = H) this is ``a`` exactly; a ridge toward zero instead would
    shrink every refit layer by up to 1/(1 + damping), compounding over a deep network.
    """
    return cho_solve(cholesky(h), g @ a.T + lam * a.T).T


class Problems:
    """The statistics and problems of the layers at the current cut of the layer loop.

    The loop owns it: :meth:`at_cut` when the live tensors move on, :meth:`done` when a layer is
    zipped. ``reference`` holds, per task, the original network's live tensors (recovery and the
    merge check compare against them).
    """

    def __init__(self, irs: list[ModelIR], opts: ZipOptions, matchings: Matchings, samples: int) -> None:
        self.irs, self.opts, self.matchings, self.samples = irs, opts, matchings, samples
        self.estimator = HESSIANS.get(opts.hessian)
        self.reference: list[Batches] | None = None
        self._hessians: dict[tuple[int, int], tuple] = {}  # (layer, task) -> (H or WideRows, G or None)
        self._problems: dict[int, LayerProblem] = {}
        self._blocks: dict[int, list] = {}  # layer -> per task task_blocks() of its problem
        self._same: dict[tuple[int, str], bool] = {}  # (id of live Batches, tensor) -> equals the original
        self.fractions: dict[int, float] = {}  # layer -> the fraction of its input rows its statistics read
        self.rows_read: dict[int, int] = {}  # layer -> the rows its statistics read (the fewest of any task)
        #: layer -> the multiply-adds of its dense statistics over the tasks: rows read x (w + 1)(w + 2) / 2
        #: (X'X, symmetric), plus rows x (w + 1)^2 for a cross moment: the least arithmetic that computes them
        self.stat_flops: dict[int, float] = {}
        self.few_rows: dict[str, tuple[int, int]] = {}  # layer -> (rows read, statistic size): rank-deficient

    def warn_few_rows(self) -> None:
        """Say once which layers' statistics read fewer rows than they are wide (too few samples)."""
        if self.few_rows:
            worst = sorted(self.few_rows.items(), key=lambda kv: kv[1][0] / kv[1][1])
            log.warning("%d %s statistics read fewer rows than their size, so their merges lean on the "
                        "damping (%s%s); give more calibration samples", len(worst),
                        "layers'" if len(worst) != 1 else "layer's",
                        ", ".join(f"{n}: {r} rows for {w}" for n, (r, w) in worst[:3]), ", ..." if len(worst) > 3 else "")

    def at_cut(self, reference: list[Batches] | None) -> None:
        """The loop moved to a new cut: the original networks' tensors there; what was known of
        the last cut's tensors is dropped (their batches are gone)."""
        self.reference = reference
        self._same = {}

    def done(self, li: int) -> None:
        """Layer ``li`` is zipped: drop its statistics and problem."""
        self._hessians = {key: h for key, h in self._hessians.items() if key[0] != li}
        self._problems.pop(li, None)
        self._blocks.pop(li, None)

    def forget(self) -> None:
        """Drop everything held (the budget's pass moves its live tensors on)."""
        self._hessians, self._problems, self._blocks, self._same = {}, {}, {}, {}

    # ------------------------------------------------------------------ which form
    def wide(self, li: int) -> bool:
        """Whether layer ``li`` keeps its statistic as input rows (:func:`is_wide` with the fewest
        samples of any task: one decision for every task)."""
        return self.estimator.uses_data and is_wide(self.irs[0].layers[li], self.samples)

    def offset(self, li: int) -> bool:
        """Whether layer ``li``'s problem is worked in the offset basis (:mod:`onnxzip.sharing.offsets`)."""
        return self.opts.offset_basis and self.estimator.offset(self.irs[0].layers[li])

    def fits(self, li: int) -> bool:
        """Whether layer ``li``'s statistics fit this machine's memory (half of it)."""
        return self.wide(li) or self.offset(li) or not self.estimator.uses_data or \
            self.dense_bytes(li) <= available_memory() // 2

    def too_large(self, li: int) -> UsageError:
        """The error for layer ``li``, whose dense statistics do not fit (:meth:`fits`)."""
        layer, memory = self.irs[0].layers[li], available_memory()
        return UsageError(f"layer {layer.name!r} has {layer.fan_in} weights per neuron: its statistics would take "
                          f"{self.dense_bytes(li) / 1e9:.1f} GB, more than half of this machine's {memory / 1e9:.1f} "
                          "GB; share nothing in its group (a --share list with 0 there) or use --hessian channel")

    def dense_bytes(self, li: int) -> int:
        """The bytes layer ``li``'s dense statistics take at once (``HESSIAN_COPIES`` per task)."""
        return (self.irs[0].layers[li].fan_in + 1) ** 2 * 8 * HESSIAN_COPIES * len(self.irs)

    # ------------------------------------------------------------------ inputs
    def same_input(self, li: int, task: int, live: Batches) -> bool:
        """Whether layer ``li``'s input in ``task`` equals the original network's, sample by sample."""
        name = self.irs[task].layers[li].input
        key = (id(live), name)
        if key not in self._same:
            self._same[key] = live.same(self.reference[task], name)
        return self._same[key]

    def inputs_unchanged(self, li: int, live: list[Batches]) -> list[bool | None]:
        """Per task: whether layer ``li``'s input equals the original network's (None: not known,
        no reference or the input is not live)."""
        out = []
        for t, (ir, lv) in enumerate(zip(self.irs, live)):
            n = ir.layers[li].input
            ref = self.reference[t] if self.reference else None
            out.append(None if ref is None or n not in lv or n not in ref else self.same_input(li, t, lv))
        return out

    def needs_refit(self, li: int, live: list[Batches]) -> bool:
        """Recovery is on and some task's input to layer ``li`` differs from the original network's."""
        if not self.opts.recover or self.reference is None or not self.fits(li):
            return False  # (a layer too wide for a Hessian keeps its weights when nothing in it is shared)
        return any(same is False for same in self.inputs_unchanged(li, live))

    def sample_weights(self, li: int, task: int, x_ref: Batches) -> np.ndarray | None:
        """For a dense layer read by a LayerNorm over its channels: each sample weighted by 1 / the
        variance of the layer's original output on it (:func:`onnxzip.calibrate.stats.normalized_weights`),
        so costs and merges measure the error that survives the normalization. None elsewhere."""
        ir = self.irs[task]
        layer = ir.layers[li]
        if li not in ir.spaces.normalized or layer.kind != "dense" or not self.estimator.uses_data:
            return None
        w, b = ir.weights(layer)
        w = w.reshape(w.shape[0], -1).T.astype(np.float64)
        z = [np.asarray(x, np.float64).reshape(x.shape[0], -1) @ w + b for x in x_ref.column(layer.input)]
        return normalized_weights(np.concatenate(z))

    # ------------------------------------------------------------------ statistics
    def statistics(self, li: int, task: int, live: Batches) -> tuple:
        """(H, G) of layer ``li``'s input in ``task``; G (the cross moment with the original network's
        input) only when recovering and the input differs from the original one. One pass over the
        batches of ``live`` (and of the original network's)."""
        key = (li, task)
        if key not in self._hessians:
            self._hessians[key] = self._statistics(li, task, live)
        return self._hessians[key]

    def _statistics(self, li: int, task: int, live: Batches) -> tuple:
        layer = self.irs[task].layers[li]
        name = layer.input
        ref = self.reference[task] if self.opts.recover and self.reference else None
        unchanged = ref is None or self.same_input(li, task, live)
        weights = self.sample_weights(li, task, live if ref is None else ref)
        if self.wide(li):
            self.rows_read[li] = min(self.rows_read.get(li, live.entries(name)), live.entries(name))
            with phase("statistics"):
                return WideRows(input_rows(live, name, weights), None if unchanged else input_rows(ref, name, weights)), None
        if not self.fits(li):
            raise self.too_large(li)
        method, expand = self.opts.hessian, not self.offset(li)
        fraction = row_fraction(layer, method, live.sample(name), live.entries(name), self.opts.stat_rows)
        rows, width = row_count(layer, method, live.sample(name), live.entries(name))
        self.rows_read[li] = min(self.rows_read.get(li, rows), int(round(rows * fraction)))
        if rows and rows < width + 1 and layer.kind != "embedding":  # (an embedding's unseen ids are
            self.few_rows[layer.name] = (rows, width + 1)  # unseen tokens: merged to the tasks' mean, no lack)
        self.fractions[li] = min(fraction, self.fractions.get(li, 1.0))
        self.stat_flops[li] = self.stat_flops.get(li, 0.0) + rows * fraction * (
            (width + 1) * (width + 2) / 2 + (0 if unchanged else (width + 1) ** 2))
        with phase("statistics"):
            if unchanged:
                return layer_hessian(layer, live.column(name), method, sample_weights=weights, fraction=fraction,
                                     expand=expand), None
            return cross_moments(layer, live.column(name), ref.column(name), method, sample_weights=weights,
                                 fraction=fraction, expand=expand)

    def spent(self, li: int, task: int, statistic) -> None:
        """Keep only H of a layer's statistic once its cross moment is used (large layers' memory)."""
        self._hessians[(li, task)] = (statistic, None)

    def raw(self, li: int, task: int):
        """The undamped statistic H of layer ``li``'s input in ``task`` (computed already)."""
        return self._hessians[(li, task)][0]

    # ------------------------------------------------------------------ problems
    def problem(self, li: int, live: list[Batches]) -> LayerProblem:
        """Layer ``li``'s problem; computed once per layer: choosing a group's matching and merging
        the layer ask for the same (its input columns are fixed by then)."""
        if li not in self._problems:
            with phase("costs"):  # (statistics and recovery inside count in their own phases too)
                self._problems[li] = (offset_problem if self.offset(li) else dense_problem)(self, li, live)
        return self._problems[li]

    def blocks(self, li: int, live: list[Batches]) -> list:
        """Per task, the Schur blocks (:func:`onnxzip.sharing.merge.task_blocks`) of layer ``li``'s
        problem (per part, per task in the offset basis): factorized once for matching and merging."""
        if li not in self._blocks:
            p = self.problem(li, live)
            compensate = self.opts.compensate
            with phase("costs"):
                if p.offset is not None:
                    self._blocks[li] = [[task_blocks(h, part.ns, compensate) for h in part.hs]
                                        for part in p.offset.parts]
                elif isinstance(p.hs[0], WideRows):
                    shared = basis(*[h.rows[:, :p.ns] for h in p.hs])
                    self._blocks[li] = [wide_blocks(h.rows, h.lam, p.ns, shared, compensate) for h in p.hs]
                else:
                    self._blocks[li] = [task_blocks(h, p.ns, compensate) for h in p.hs]
        return self._blocks[li]


def dense_problem(problems: Problems, li: int, live: list[Batches]) -> LayerProblem:
    """The problem of a dense layer or a conv under an exact statistic (dense or wide rows)."""
    mats, hs, cols, ns = [], [], [], 0
    for t, ir in enumerate(problems.irs):
        order, ns = problems.matchings.column_order(ir, li, t)
        raw, g = problems.statistics(li, t, live[t])
        mat = as_matrix(*ir.weights(ir.layers[li]))
        if isinstance(raw, WideRows):
            lam = raw.damping(problems.opts.damping)
            if raw.ref is not None:
                with phase("recovery"):
                    mat = woodbury_refit(raw.rows, raw.ref, mat, lam)
                problems.spent(li, t, WideRows(raw.rows))  # (the original rows are spent)
            hs.append(WideRows(raw.rows[:, order], None, lam))
        else:
            h = damp(raw, problems.opts.damping)
            if g is not None:  # recovery: target the original pre-activations, not the original weights
                with phase("recovery"):
                    mat = refit(mat, h, g, damping_of(raw, problems.opts.damping))
                problems.spent(li, t, raw)  # (G is spent: large layers' memory)
            hs.append(h[np.ix_(order, order)])
            del h
        mats.append(mat[:, order])
        cols.append(order)
    return LayerProblem(mats, hs, cols, ns)


def offset_problem(problems: Problems, li: int, live: list[Batches]) -> LayerProblem:
    """The problem of a per-channel conv in the offset basis. Recovery refits each component
    with its own blocks."""
    layer = problems.irs[0].layers[li]
    k, c = layer.kernel, layer.fan_in // layer.kernel
    cols, ns, problem = [], 0, None
    for t, ir in enumerate(problems.irs):
        order, ns = problems.matchings.column_order(ir, li, t)
        shared, private = channel_order(order, ns, k)
        if problem is None:
            problem = OffsetProblem(k, shared.size, [OffsetPart(1, shared.size + 1), OffsetPart(k - 1, shared.size)])
        hc, gc = problems.statistics(li, t, live[t])
        h0, b = offsets.blocks(hc, k)
        lam = relative_damping(offsets.trace(h0, b, k) / (layer.fan_in + 1), problems.opts.damping)
        h0, b = h0 + lam * np.eye(c + 1), b + lam * np.eye(c)
        w0, rest = offsets.split(as_matrix(*ir.weights(ir.layers[li])), k)
        if gc is not None:  # recovery: target the original pre-activations
            g0, gb = offsets.blocks(gc, k)
            with phase("recovery"):
                w0 = refit(w0, h0, g0, lam)
                rest = refit(rest.reshape(-1, c), b, gb, lam).reshape(rest.shape)
            problems.spent(li, t, hc)
        for part, o, m, h in ((problem.parts[0], np.r_[shared, c, private], w0[None], h0),
                              (problem.parts[1], np.r_[shared, private], rest, b)):
            part.mats.append(m[:, :, o])
            part.hs.append(h[np.ix_(o, o)])
            part.lam.append(lam)
        cols.append(order)
    return LayerProblem([], [], cols, ns, offset=problem)
