"""The bottom-up layer loop: statistics -> match and merge -> next stage, for N tasks.

Every task's network is run stage by stage (:mod:`onnxzip.calibrate.stages`) with the layers already zipped
in place, so the Hessians of layer ``l`` come from the network as zipped below ``l`` and each node
sees the calibration set once.

Weights are handled as 2-D matrices: a layer of ``n`` neurons and fan-in ``d`` is (n, d + 1) with
the bias as the last column (ONNX order: channel-major, kernel offsets inner). Zipped order puts
the shared rows first and the columns as ``[shared inputs, bias | private inputs]``.

Layers tied into one group (:mod:`onnxzip.graph.spaces`: residual joins) share one matching, chosen when
the group's first layer comes up from the summed costs of the group's layers whose inputs are
already available (computed and fixed); the group's later layers follow that matching and merge
their own rows with their own Hessians. Depthwise convs follow their input's matching.
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from scipy.linalg import cho_solve

from ..calibrate.fisher import loss_statistics
from ..calibrate.spool import Batches, Spool
from ..calibrate.stages import StagedNetwork
from ..calibrate.stats import (
    cross_moments,
    depthwise_hessians,
    exact_rows,
    is_exact,
    is_offset,
    layer_hessian,
    normalized_weights,
    row_fraction,
)
from ..errors import InternalError, UsageError
from ..graph.ir import Layer, ModelIR
from ..graph.spaces import ALIGNED, PRIVATE
from ..timing import phase
from . import offsets
from .lowrank import basis, wide_blocks, woodbury_refit
from .merge import (
    MATCHERS,
    cholesky,
    damp,
    damping_of,
    match_tasks,
    merge_followers,
    merge_rows,
    relative_damping,
    task_blocks,
)
from .plan import counts_given, shared_counts

log = logging.getLogger(__name__)
#: a dense layer with more inputs than this, seen on fewer samples than it has inputs, keeps its
#: statistic as the input rows (H = R'R / n: low rank, :mod:`onnxzip.sharing.lowrank`), never as d x d
LOWRANK_MIN = 4096
#: (d + 1)^2 float64 matrices a dense statistic needs at once per task (H, G, damped, reordered, blocks)
HESSIAN_COPIES = 6
#: the original networks' outputs are kept for this many calibration samples (the first ones): the
#: float noise of the normalized graph against the original file (:func:`onnxzip.check.verify.float_noise`)
NOISE_SAMPLES = 64
#: per-channel conv statistics are worked in the offset basis (:mod:`onnxzip.sharing.offsets`); False: as
#: dense (C K + 1)^2 matrices (the same numbers, O((C K)^3) work: the oracle in tests)
OFFSET_BASIS = True


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
class Part:
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
    parts: list[Part]

    def to_zipped(self, z0: np.ndarray, rest: np.ndarray) -> np.ndarray:
        """Component rows (n, C + 1) and (K - 1, n, C) back to weight rows (n, C K + 1) in zipped
        column order (``[shared channels x offsets, bias | private channels x offsets]``)."""
        cs, k = self.cs, self.kernel
        w = offsets.join(np.concatenate([z0[:, :cs], z0[:, cs + 1:], z0[:, cs:cs + 1]], axis=1), rest, k)
        return np.concatenate([w[:, :cs * k], w[:, -1:], w[:, cs * k:-1]], axis=1)


def channel_order(order: np.ndarray, ns: int, kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """A conv's zipped column order (shared columns, bias, private columns) -> its shared and
    private channels, each channel's ``kernel`` offsets being consecutive columns."""
    shared, private = order[:ns - 1], order[ns:]
    sc, pc = shared[::kernel] // kernel, private[::kernel] // kernel
    if not (np.array_equal(expand_channels(sc, kernel), shared) and np.array_equal(expand_channels(pc, kernel), private)
            and order[ns - 1] == order.size - 1):
        raise InternalError("a conv's zipped columns do not keep each channel's kernel offsets together")
    return sc, pc


def group_name(ir: ModelIR, members: list[int]) -> str:
    """A group's layer names, for messages and listings."""
    return "+".join(ir.layers[i].name for i in members)


@dataclass
class LayerZip:
    """One layer of the zipped model, for every task.

    ``rows[t]`` gives, per zipped row, the task's original neuron index; ``cols[t]`` per zipped
    column the original column index (``fan_in`` is the bias). ``weights[t]`` (n, d + 1) is in
    zipped order and ``weights[t][:shared, :ns]`` is the same for every task. A depthwise
    ``follower`` keeps rows in original order; its shared channels are those of its input.
    """

    layer: int
    shared: int
    ns: int
    rows: list[np.ndarray]
    cols: list[np.ndarray]
    weights: list[np.ndarray]
    costs: np.ndarray
    follower: bool = False
    #: per task, the mean over samples and positions of the summed squared pre-activation change the
    #: merge makes to the layer's targets, from the undamped statistic (None: not a merged layer)
    predicted: list[float] | None = None
    #: whether ``predicted`` is the exact pre-activation error against the original network: the
    #: layer's input is the original one in every task and its statistic is exact (not per-channel)
    checkable: bool = False
    #: the fraction of the layer's input rows (samples x positions) its statistics read
    rows_read: float = 1.0

    @property
    def neurons(self) -> int:
        return self.weights[0].shape[0]


@dataclass
class ZipPlan:
    """Every layer's zip (hidden layers and private heads) and the zipped tasks' outputs."""

    layers: dict[int, LayerZip]
    hidden: list[int]
    outputs: list[dict[str, np.ndarray]]  # per task, on the calibration data
    groups: list[list[int]] = field(default_factory=list)
    orders: dict[int, dict] = field(default_factory=dict)  # group -> task order chosen and costs per order
    loss_aware: bool = False  # costs are in loss units
    constants: list[dict[str, np.ndarray]] = field(default_factory=list)  # per task: re-estimated BN statistics
    #: per task, the original (normalized) network's float outputs on the first ``NOISE_SAMPLES``
    #: calibration samples as run stage by stage (against the original file: the float noise)
    originals: list[dict[str, np.ndarray]] = field(default_factory=list)
    #: hidden layer -> per task (error, signal): the zipped network's pre-activation against the
    #: original's, measured in ONNX Runtime on the calibration data (:meth:`StagedNetwork.run_pair`)
    measured: dict[int, list[tuple[float, float]]] = field(default_factory=dict)


def as_matrix(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(W of shape (n, ...), b (n,)) -> (n, fan_in + 1) float64 with the bias last."""
    return np.concatenate([w.reshape(w.shape[0], -1), b[:, None]], axis=1).astype(np.float64)


def from_matrix(m: np.ndarray, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`as_matrix` for ``layer``'s weight shape."""
    return m[:, :-1].reshape((m.shape[0],) + layer.shape[1:]), m[:, -1]


class Zipper:
    """Zips aligned tasks layer by layer; see the module docstring."""

    def __init__(self, irs: list[ModelIR], share, matching: str, hessian: str, damping: float, compensate: bool,
                 task_order: str, recover: bool = True, fisher: list[dict[int, np.ndarray]] | None = None,
                 cost: str = "mtz") -> None:
        if len(irs) < 2:
            raise UsageError("give at least two models")
        self.irs, self.matching, self.estimator = irs, matching, hessian
        self.damping, self.compensate, self.task_order, self.recover = damping, compensate, task_order, recover
        self.reference: list[dict[str, np.ndarray]] | None = None  # per task: the original network's live tensors
        self.fisher = fisher  # per task: layer -> (neurons,) loss weights (None: costs in pre-activation units)
        self.samples: int | None = None  # the fewest calibration samples of any task (set by the caller)
        self.cost = cost  # "mtz" (Hessian costs) or "correlation" (output correlation, a baseline)
        if cost == "correlation" and len(irs) != 2:
            raise UsageError("correlation matching zips two models")
        spaces = irs[0].spaces
        self.groups = spaces.groups
        names = [group_name(irs[0], g) for g in self.groups]
        sizes = [min(ir.layers[g[0]].neurons for ir in irs) for g in self.groups]
        self.k = list(share) if counts_given(share) else shared_counts(share, sizes, names)
        self.group_of = {i: g for g, members in enumerate(self.groups) for i in members}
        self.rows: dict[int, list[np.ndarray]] = {}  # group -> per task: neuron order (shared slots first)
        self.zips: dict[int, LayerZip] = {}
        self.orders: dict[int, dict] = {}
        self._hessians: dict[tuple[int, int], np.ndarray] = {}
        self._problems: dict[int, tuple] = {}  # layer -> problem(); dropped once the layer is zipped
        self._blocks: dict[int, list] = {}  # layer -> per task task_blocks() of its problem
        self._same: dict[tuple[int, str], bool] = {}  # (id of live Batches, tensor) -> equals the original
        self.slot_costs: dict[int, np.ndarray] = {}  # group -> cost of each shared slot, ascending
        self.fractions: dict[int, float] = {}  # layer -> the fraction of its input rows its statistics read

    # ------------------------------------------------------------------ column layout
    def group_perm(self, layer: int, task: int) -> tuple[np.ndarray, int]:
        g = self.group_of[layer]
        if g not in self.rows:
            raise KeyError(g)
        return self.rows[g][task], self.k[g]

    def column_order(self, li: int, task: int) -> tuple[np.ndarray, int]:
        """Zipped column order of layer ``li`` in ``task`` and the count of leading shared columns."""
        ir = self.irs[task]
        layer = ir.layers[li]
        d = layer.fan_in
        if layer.input in ir.spaces.private:
            return np.concatenate([[d], np.arange(d)]), 1
        space = ir.spaces.layout.get(layer.input)
        if space is None:
            return np.arange(d + 1), d + 1
        per_channel = space.block * layer.kernel
        shared, private, offset = [], [], 0
        for seg in space.segments:
            chans = np.arange(seg.count)
            if seg.layer == ALIGNED:
                shared.append(chans + offset)
            elif seg.layer == PRIVATE:
                private.append(chans + offset)
            else:
                perm, k = self.group_perm(seg.layer, task)
                shared.append(perm[:k] + offset)
                private.append(perm[k:] + offset)
            offset += seg.count
        cols = [expand_channels(np.concatenate(x) if x else np.zeros(0, int), per_channel) for x in (shared, private)]
        return np.concatenate([cols[0], [d], cols[1]]).astype(np.int64), cols[0].size + 1

    def decided(self, li: int) -> bool:
        """Whether every group feeding layer ``li`` has its matching."""
        space = self.irs[0].spaces.layout.get(self.irs[0].layers[li].input)
        return space is None or all(s.layer < 0 or self.group_of[s.layer] in self.rows for s in space.segments)

    # ------------------------------------------------------------------ statistics
    def statistics(self, li: int, task: int, live: Batches) -> tuple[np.ndarray, np.ndarray | None]:
        """(H, G) of layer ``li``'s input in ``task``; G (the cross moment with the original network's
        input) only when recovering and the input differs from the original one. One pass over the
        batches of ``live`` (and of the original network's)."""
        key = (li, task)
        if key not in self._hessians:
            layer = self.irs[task].layers[li]
            name = layer.input
            ref = self.reference[task] if self.recover and self.reference else None
            unchanged = ref is None or self.same_input(li, task, live)
            weights = self.sample_weights(li, task, live if ref is None else ref)
            if self.wide(li):
                with phase("statistics"):
                    self._hessians[key] = (WideRows(input_rows(live, name, weights),
                                                    None if unchanged else input_rows(ref, name, weights)), None)
                return self._hessians[key]
            expand = not self.offset(li)
            if not self.fits(li):
                gb = (layer.fan_in + 1) ** 2 * 8 * HESSIAN_COPIES * len(self.irs) / 1e9
                raise UsageError(f"layer {layer.name!r} has {layer.fan_in} weights per neuron: its statistics would "
                                 f"take {gb:.1f} GB, more than this machine has; share nothing in its group (a "
                                 "--share list with 0 there) or use --hessian channel")
            fraction = row_fraction(layer, self.estimator, live.sample(name), live.samples)
            self.fractions[li] = min(fraction, self.fractions.get(li, 1.0))
            with phase("statistics"):
                if unchanged:
                    self._hessians[key] = (layer_hessian(layer, live.column(name), self.estimator,
                                                         sample_weights=weights, fraction=fraction, expand=expand),
                                           None)
                else:
                    self._hessians[key] = cross_moments(layer, live.column(name), ref.column(name), self.estimator,
                                                        sample_weights=weights, fraction=fraction, expand=expand)
        return self._hessians[key]

    def wide(self, li: int) -> bool:
        """Whether layer ``li`` keeps its statistic as input rows (:func:`is_wide` with the fewest
        samples of any task: one decision for every task)."""
        return self.estimator != "identity" and self.samples is not None and \
            is_wide(self.irs[0].layers[li], self.samples)

    def offset(self, li: int) -> bool:
        """Whether layer ``li``'s problem is worked in the offset basis (:mod:`onnxzip.sharing.offsets`)."""
        return OFFSET_BASIS and is_offset(self.irs[0].layers[li], self.estimator)

    def fits(self, li: int) -> bool:
        """Whether layer ``li``'s statistics fit this machine's memory (half of it)."""
        layer = self.irs[0].layers[li]
        return self.wide(li) or self.offset(li) or self.estimator == "identity" or \
            (layer.fan_in + 1) ** 2 * 8 * HESSIAN_COPIES * len(self.irs) <= available_memory() // 2

    def same_input(self, li: int, task: int, live: Batches) -> bool:
        """Whether layer ``li``'s input in ``task`` equals the original network's, sample by sample."""
        name = self.irs[task].layers[li].input
        key = (id(live), name)
        if key not in self._same:
            self._same[key] = live.same(self.reference[task], name)
        return self._same[key]

    def sample_weights(self, li: int, task: int, x_ref: Batches) -> np.ndarray | None:
        """For a dense layer read by a LayerNorm over its channels: each sample weighted by 1 / the
        variance of the layer's original output on it (:func:`onnxzip.calibrate.stats.normalized_weights`), so
        costs and merges measure the error that survives the normalization. None elsewhere."""
        ir = self.irs[task]
        layer = ir.layers[li]
        if li not in ir.spaces.normalized or layer.kind != "dense" or self.estimator == "identity":
            return None
        w, b = ir.weights(layer)
        w = w.reshape(w.shape[0], -1).T.astype(np.float64)
        z = [np.asarray(x, np.float64).reshape(x.shape[0], -1) @ w + b for x in x_ref.column(layer.input)]
        return normalized_weights(np.concatenate(z))

    def loss_weights(self, li: int) -> list[np.ndarray] | None:
        """Per task, layer ``li``'s per-neuron loss weights, if loss-aware."""
        if self.fisher is None or any(li not in f for f in self.fisher):
            return None
        return [f[li] for f in self.fisher]

    def needs_refit(self, li: int, live: list[Batches]) -> bool:
        """Recovery is on and some task's input to layer ``li`` differs from the original network's."""
        if not self.recover or self.reference is None or not self.fits(li):
            return False  # (a layer too wide for a Hessian keeps its weights when nothing in it is shared)
        return any(same is False for same in self.inputs_unchanged(li, live))

    def inputs_unchanged(self, li: int, live: list[Batches]) -> list[bool | None]:
        """Per task: whether layer ``li``'s input equals the original network's (None: not known,
        no reference or the input is not live)."""
        out = []
        for t, (ir, lv) in enumerate(zip(self.irs, live)):
            n = ir.layers[li].input
            ref = self.reference[t] if self.reference else None
            out.append(None if ref is None or n not in lv or n not in ref else self.same_input(li, t, lv))
        return out

    def problem(self, li: int, live: list[Batches]) -> tuple[list, list, list, int]:
        """Per task: weights (refit targets when recovering) and damped Hessian in zipped column order;
        the columns; ns. Computed once per layer: choosing a group's matching and merging the layer
        ask for the same (its input columns are fixed by then)."""
        if li not in self._problems:
            with phase("costs"):  # (statistics and recovery inside count in their own phases too)
                self._problems[li] = self._build_problem(li, live)
        return self._problems[li]

    def blocks(self, li: int, live: list[Batches]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per task, the Schur blocks (:func:`onnxzip.sharing.merge.task_blocks`) of layer ``li``'s problem:
        factorized once for choosing the matching and merging."""
        if li not in self._blocks:
            mats, hs, _, ns = self.problem(li, live)
            with phase("costs"):
                self._blocks[li] = self._task_blocks(mats if isinstance(mats, OffsetProblem) else hs, ns)
        return self._blocks[li]

    def _task_blocks(self, hs: list, ns: int) -> list:
        if isinstance(hs, OffsetProblem):  # per part, per task
            return [[task_blocks(h, part.ns, self.compensate) for h in part.hs] for part in hs.parts]
        if isinstance(hs[0], WideRows):
            shared = basis(*[h.rows[:, :ns] for h in hs])
            return [wide_blocks(h.rows, h.lam, ns, shared, self.compensate) for h in hs]
        return [task_blocks(h, ns, self.compensate) for h in hs]

    def _build_problem(self, li: int, live: list[Batches]) -> tuple[list, list, list, int]:
        if self.offset(li):
            return self._build_offsets(li, live)
        mats, hs, cols, ns = [], [], [], 0
        for t, ir in enumerate(self.irs):
            order, ns = self.column_order(li, t)
            raw, g = self.statistics(li, t, live[t])
            mat = as_matrix(*ir.weights(ir.layers[li]))
            if isinstance(raw, WideRows):
                lam = raw.damping(self.damping)
                if raw.ref is not None:
                    with phase("recovery"):
                        mat = woodbury_refit(raw.rows, raw.ref, mat, lam)
                    self._hessians[(li, t)] = (WideRows(raw.rows), None)  # (the original rows are spent)
                hs.append(WideRows(raw.rows[:, order], None, lam))
                mats.append(mat[:, order])
                cols.append(order)
                continue
            h = damp(raw, self.damping)
            if g is not None:  # recovery: target the original pre-activations, not the original weights
                with phase("recovery"):
                    mat = refit(mat, h, g, damping_of(raw, self.damping))
                self._hessians[(li, t)] = (raw, None)  # (G is spent: large layers' memory)
            hs.append(h[np.ix_(order, order)])
            del h
            mats.append(mat[:, order])
            cols.append(order)
        return mats, hs, cols, ns

    def _build_offsets(self, li: int, live: list[Batches]) -> tuple[OffsetProblem, None, list, int]:
        """:meth:`problem` of a per-channel conv, in the offset basis: (OffsetProblem, None, the
        zipped column orders, ns). Recovery refits each component with its own blocks."""
        layer = self.irs[0].layers[li]
        k, c = layer.kernel, layer.fan_in // layer.kernel
        cols, ns, problem = [], 0, None
        for t, ir in enumerate(self.irs):
            order, ns = self.column_order(li, t)
            shared, private = channel_order(order, ns, k)
            if problem is None:
                problem = OffsetProblem(k, shared.size, [Part(1, shared.size + 1), Part(k - 1, shared.size)])
            hc, gc = self.statistics(li, t, live[t])
            h0, b = offsets.blocks(hc, k)
            lam = relative_damping(offsets.trace(h0, b, k) / (layer.fan_in + 1), self.damping)
            h0, b = h0 + lam * np.eye(c + 1), b + lam * np.eye(c)
            w0, rest = offsets.split(as_matrix(*ir.weights(ir.layers[li])), k)
            if gc is not None:  # recovery: target the original pre-activations
                g0, gb = offsets.blocks(gc, k)
                with phase("recovery"):
                    w0 = refit(w0, h0, g0, lam)
                    rest = refit(rest.reshape(-1, c), b, gb, lam).reshape(rest.shape)
                self._hessians[(li, t)] = (hc, None)
            for part, o, m, h in ((problem.parts[0], np.r_[shared, c, private], w0[None], h0),
                                  (problem.parts[1], np.r_[shared, private], rest, b)):
                part.mats.append(m[:, :, o])
                part.hs.append(h[np.ix_(o, o)])
                part.lam.append(lam)
            cols.append(order)
        return problem, None, cols, ns

    def _merge_offsets(self, li: int, rows: list[np.ndarray], k: int, live: list[Batches]
                       ) -> tuple[list[np.ndarray], np.ndarray, list[float] | None, list[np.ndarray], int]:
        """:meth:`_merge_dense` for a per-channel conv, part by part in the offset basis."""
        problem, _, cols, ns = self.problem(li, live)
        f = self.loss_weights(li)
        costs, predicted = np.zeros(k), np.zeros(len(self.irs))
        zipped = []
        for part, blocks in zip(problem.parts, self.blocks(li, live)):
            n = part.count
            if k:
                with phase("merge"):
                    w, privs, cost = merge_rows([m[:, r[:k]].reshape(n * k, -1) for m, r in zip(part.mats, rows)],
                                                part.hs, part.ns, self.compensate,
                                                None if f is None else [np.tile(x[r[:k]], n) for x, r in zip(f, rows)],
                                                blocks)
                costs += cost.reshape(n, k).sum(axis=0)
            zs = []
            for t, (m, r) in enumerate(zip(part.mats, rows)):
                z = m[:, r]
                if k:
                    z[:, :k, :part.ns] = w.reshape(n, k, -1)
                    z[:, :k, part.ns:] = privs[t].reshape(n, k, -1)
                    d = (z[:, :k] - m[:, r[:k]]).reshape(n * k, -1)  # d' H d = d' (H + lam I) d - lam d'd
                    predicted[t] += float(((d @ part.hs[t]) * d).sum() - part.lam[t] * np.square(d).sum())
                zs.append(z)
            zipped.append(zs)
        weights = [problem.to_zipped(z0[0], rest) for z0, rest in zip(*zipped)]
        return weights, costs, (list(predicted) if k else None), cols, ns

    # ------------------------------------------------------------------ one layer
    def zip_layer(self, li: int, live: list[Batches]) -> LayerZip:
        if li in self.irs[0].spaces.followers:
            return self._follow(li, live)
        g = self.group_of[li]
        if g not in self.rows:
            self.decide(g, live)
        k, rows = self.k[g], self.rows[g]
        merge = self._merge_offsets if (k or self.needs_refit(li, live)) and self.offset(li) else self._merge_dense
        weights, costs, predicted, cols, ns = merge(li, rows, k, live)
        layer = self.irs[0].layers[li]
        weighted = li in self.irs[0].spaces.normalized and layer.kind == "dense"  # see sample_weights
        fraction = self.fractions.get(li, 1.0)
        checkable = (k > 0 and is_exact(layer, self.estimator) and not weighted and fraction == 1.0
                     and all(self.inputs_unchanged(li, live)))
        self._hessians = {key: h for key, h in self._hessians.items() if key[0] != li}
        self._problems.pop(li, None)
        self._blocks.pop(li, None)
        return LayerZip(li, k, ns, list(rows), cols, weights, costs, predicted=predicted, checkable=checkable,
                        rows_read=fraction)

    def _merge_dense(self, li: int, rows: list[np.ndarray], k: int, live: list[Batches]
                     ) -> tuple[list[np.ndarray], np.ndarray, list[float] | None, list[np.ndarray], int]:
        """Merge layer ``li``'s first ``k`` slots: per task the weights in zipped order, the cost per
        slot, the predicted errors (:meth:`predicted_errors`), the column orders and ns."""
        if k or self.needs_refit(li, live):
            mats, hs, cols, ns = self.problem(li, live)
            f = self.loss_weights(li)
            with phase("merge"):
                w, privs, costs = merge_rows([m[r[:k]] for m, r in zip(mats, rows)], hs, ns, self.compensate,
                                             None if f is None else [x[r[:k]] for x, r in zip(f, rows)],
                                             self.blocks(li, live)) if k else (None, None, np.zeros(0))
        else:  # nothing shared: no statistics needed
            orders = [self.column_order(li, t) for t in range(len(self.irs))]
            cols, ns = [o for o, _ in orders], orders[0][1]
            mats = [as_matrix(*ir.weights(ir.layers[li]))[:, o] for ir, o in zip(self.irs, cols)]
            w, privs, costs = None, None, np.zeros(0)
        weights = []
        for t, (m, r) in enumerate(zip(mats, rows)):
            z = m[r].copy()
            if k:
                z[:k, :ns] = w
                z[:k, ns:] = privs[t]
            weights.append(z)
        predicted = self.predicted_errors(li, weights, mats, rows, cols, k) if k else None
        return weights, costs, predicted, cols, ns

    def predicted_errors(self, li: int, weights: list[np.ndarray], mats: list[np.ndarray], rows: list[np.ndarray],
                         cols: list[np.ndarray], k: int) -> list[float]:
        """Per task: sum over the shared rows of d' H d, d = merged row - its target, H the undamped
        statistic of the layer's input (zipped column order)."""
        out = []
        for t in range(len(self.irs)):
            raw = self._hessians[(li, t)][0]
            d = weights[t][:k] - mats[t][rows[t][:k]]
            if isinstance(raw, WideRows):
                out.append(float(np.square(d @ raw.rows[:, cols[t]].T).sum()) / raw.rows.shape[0])
                continue
            full = np.zeros_like(d)
            full[:, cols[t]] = d  # back to the statistic's column order (no reordered copy of H)
            out.append(float(((full @ raw) * full).sum()))
        return out

    def forget_inputs(self) -> None:
        """Drop what is known about the tensors of the last cut (their batches are gone)."""
        self._same = {}

    def forget(self) -> None:
        """Drop the statistics held for layers being decided (their inputs move on)."""
        self._hessians, self._problems, self._blocks, self._same = {}, {}, {}, {}

    def decide(self, g: int, live: list[Batches]) -> None:
        """Choose group ``g``'s shared slots from the summed costs of its available layers."""
        k, n_tasks = self.k[g], len(self.irs)
        sizes = [ir.layers[self.groups[g][0]].neurons for ir in self.irs]
        if k == 0:
            self.rows[g] = [np.arange(n) for n in sizes]
            return
        if self.cost == "correlation":
            self._decide_by_correlation(g, live, sizes)
            return
        members = []
        for li in self.groups[g]:
            if not self.decided(li) or any(ir.layers[li].input not in lv for ir, lv in zip(self.irs, live)):
                continue
            mats, _, _, ns = self.problem(li, live)
            blocks = self.blocks(li, live)
            if isinstance(mats, OffsetProblem):  # each component a member: the costs add up
                members.extend(([m[j][:, :part.ns] for m in part.mats], [s for s, _ in part_blocks],
                                self.loss_weights(li))
                               for part, part_blocks in zip(mats.parts, blocks) for j in range(part.count))
                continue
            members.append(([m[:, :ns] for m in mats], [s for s, _ in blocks], self.loss_weights(li)))
        orders = [list(range(n_tasks))]
        if n_tasks > 2 and self.task_order == "auto":
            orders = [[a, b] + [t for t in range(n_tasks) if t not in (a, b)]
                      for a, b in itertools.combinations(range(n_tasks), 2)]
        started = time.perf_counter()
        with phase("matching"):
            results = [(match_tasks(members, k, self.matching, o), o) for o in orders]
        (rows, cost), order = min(results, key=lambda r: float(r[0][1].sum()))
        self.slot_costs[g] = np.sort(cost)
        self.orders[g] = {"order": [self.irs[t].name for t in order], "costed_layers": len(members),
                          "costs": {"-".join(self.irs[t].name for t in o[:2]): float(c.sum())
                                    for (_, c), o in results},
                          "cost_matrix": sizes, "shared": k, "matching_seconds": round(time.perf_counter() - started, 3)}
        full = []
        for r, n in zip(rows, sizes):
            rest = np.setdiff1d(np.arange(n), r)
            full.append(np.concatenate([r, rest]).astype(np.int64))
        self.rows[g] = full

    def _decide_by_correlation(self, g: int, live: list[Batches], sizes: list[int]) -> None:
        """ZipIt!-style matching: pair the neurons whose outputs correlate best on the same inputs
        (both tasks run the same calibration samples; see ``zip_tasks``)."""
        li = self.groups[g][0]
        layers = [ir.layers[li] for ir in self.irs]
        mats = [ir.weights(layer) for ir, layer in zip(self.irs, layers)]
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
        ia, ib = MATCHERS.get(self.matching)(1.0 - corr, self.k[g])
        order = np.argsort(1.0 - corr[ia, ib], kind="stable")
        self.slot_costs[g] = np.sort(1.0 - corr[ia, ib])
        self.rows[g] = [np.concatenate([r[order], np.setdiff1d(np.arange(n), r)]).astype(np.int64)
                        for r, n in ((ia, sizes[0]), (ib, sizes[1]))]

    def _follow(self, li: int, live: list[Batches]) -> LayerZip:
        """A depthwise conv: merge the neurons on each shared input channel slot."""
        ir0 = self.irs[0]
        layer0 = ir0.layers[li]
        space = ir0.spaces.layout[layer0.input]
        slots: list[list[int]] = [[] for _ in self.irs]
        offset = 0
        for seg in space.segments:
            if seg.layer >= 0:
                g = self.group_of[seg.layer]
                for t in range(len(self.irs)):
                    slots[t].extend(self.rows[g][t][:self.k[g]] + offset)
            offset += seg.count
        mats = [as_matrix(*ir.weights(ir.layers[li])) for ir in self.irs]
        weights = [m.copy() for m in mats]
        costs = np.zeros(0)
        if slots[0]:
            hs = []
            for t, ir in enumerate(self.irs):
                layer = ir.layers[li]
                h = depthwise_hessians(layer, live[t].column(layer.input), self.estimator)[np.asarray(slots[t])]
                hs.append(np.stack([damp(x, self.damping) for x in h]))
            w, costs = merge_followers([m[np.asarray(s)] for m, s in zip(mats, slots)], hs)
            for t, s in enumerate(slots):
                weights[t][np.asarray(s)] = w
        d = layer0.fan_in
        ident = [np.arange(m.shape[0]) for m in mats]
        return LayerZip(li, len(slots[0]), d + 1, ident, [np.arange(d + 1)] * len(mats), weights, costs,
                        follower=True)

    def private_layer(self, li: int, live: list[Batches] | None = None) -> LayerZip:
        """A layer nothing is shared in (a head): each task's own weights, columns in zipped order;
        with ``live`` (recovery), refit to reproduce the original pre-activations."""
        if live is not None and self.needs_refit(li, live):
            mats, _, cols, ns = self.problem(li, live)
            if isinstance(mats, OffsetProblem):
                mats = [mats.to_zipped(z0[0], rest) for z0, rest in zip(mats.parts[0].mats, mats.parts[1].mats)]
            rows = [np.arange(m.shape[0]) for m in mats]
            return LayerZip(li, 0, ns, rows, cols, mats, np.zeros(0))
        rows, cols, weights, ns = [], [], [], 0
        for t, ir in enumerate(self.irs):
            order, ns = self.column_order(li, t)
            mat = as_matrix(*ir.weights(ir.layers[li]))
            rows.append(np.arange(mat.shape[0]))
            cols.append(order)
            weights.append(mat[:, order])
        return LayerZip(li, 0, ns, rows, cols, weights, np.zeros(0))


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


def expand_channels(channels: np.ndarray, per_channel: int) -> np.ndarray:
    """Channel ids -> the ids of their features/columns (``per_channel`` consecutive ones each)."""
    return (np.asarray(channels, np.int64)[:, None] * per_channel + np.arange(per_channel)).reshape(-1)


def effective(z: LayerZip, task: int, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """A task's zipped layer in original order: (W, b) as the ONNX initializers hold them."""
    full = np.empty_like(z.weights[task])
    full[np.ix_(z.rows[task], z.cols[task])] = z.weights[task]
    return from_matrix(full, layer)


def zip_tasks(irs: list[ModelIR], data: list[dict[str, np.ndarray]], share, *, matching: str = "optimal",
              hessian: str = "auto", damping: float = 1e-2, compensate: bool = True, task_order: str = "auto",
              recover: bool = True, loss_aware: bool = True, labels: list | None = None, cost: str = "mtz",
              device: str = "cpu", batch: int = 64, fisher: list[dict[int, np.ndarray]] | None = None,
              outputs: list[dict[str, np.ndarray]] | None = None,
              progress: Callable[[Iterable, str], Iterable] = lambda it, desc: it) -> ZipPlan:
    """Zip aligned tasks layer by layer.

    Args:
        irs: the tasks (aligned: same layers in the same order).
        data: per task, the calibration arrays by input name.
        share: fraction of each group's neurons to share (float or one per group), or neuron counts
            per group (from :class:`onnxzip.sharing.budget.BudgetPlanner`).
        matching, hessian, damping, compensate, task_order: see ``ZipOptions``.
        recover: refit every layer's targets (and the heads) by least squares to reproduce the
            original pre-activations. (The original networks run alongside, stage by stage, either
            way: every hidden layer's zipped pre-activation is measured against the original's.)
        loss_aware: weight every neuron's cost by its loss-gradient statistic (:mod:`onnxzip.calibrate.fisher`);
            ``fisher`` gives them when already computed (:func:`loss_statistics`); ``outputs``, per
            task the original network's outputs on ``data`` when known, seed them.
        labels: per task, class labels of the calibration samples (the empirical Fisher) or None.
        cost: "mtz" (Hessian costs), or "correlation": match by output correlation (ZipIt!-style; a
            baseline, merging by ``hessian``); then every task's ``data`` must be the same samples.
    """
    hidden = irs[0].hidden
    nothing_shared = not np.any(np.asarray(share, dtype=float) > 0)
    if fisher is None and loss_aware and not nothing_shared:
        fisher = loss_statistics(irs, data, labels, device, outputs)
    zipper = Zipper(irs, share, matching, hessian, damping, compensate, task_order, recover, fisher, cost)
    zipper.samples = min(next(iter(d.values())).shape[0] for d in data)
    heads = [i for i in range(len(irs[0].layers)) if i not in hidden and i not in irs[0].spaces.plain]
    cuts = sorted(hidden + heads) if recover else hidden
    nets = [StagedNetwork(ir, cuts, device, batch) for ir in irs]
    measured: dict[int, list[tuple[float, float]]] = {}
    with Spool() as spool:
        live = [net.run_stage(0, Batches.of(d, net.batch, spool), {}) for net, d in zip(nets, data)]
        reference = list(live)  # the original networks, run alongside (recovery, and the merge check)
        eff: list[dict[int, tuple[np.ndarray, np.ndarray]]] = [{} for _ in irs]
        constants: list[dict[str, np.ndarray]] = [{} for _ in irs]  # re-estimated BatchNorm statistics
        for j, li in enumerate(progress(cuts, "zipping layers")):
            started = time.perf_counter()
            zipper.reference = reference
            z = zipper.zip_layer(li, live) if li in hidden else zipper.private_layer(li, live)
            log.info("layer %s: %d of %d neurons shared (%.2f s)", irs[0].layers[li].name, z.shared, z.neurons,
                     time.perf_counter() - started)
            zipper.zips[li] = z
            for t, ir in enumerate(irs):
                eff[t][li] = effective(z, t, ir.layers[li])
            bns = nets[0].batchnorms(j + 1, irs[0].spaces.layout) if recover else []
            if bns:
                restat_batchnorms(nets, irs, j + 1, bns, live, reference, eff, constants)
            old = live + reference
            pairs = [net.run_pair(j + 1, ref, None if lv is ref and not changes(ir, li, eff[t]) else lv, eff[t],
                                  constants[t], ir.layers[li].output if li in hidden else None,
                                  ir.layers[li].neurons)
                     for t, (net, ir, lv, ref) in enumerate(zip(nets, irs, live, reference))]
            reference, live = [r for r, _, _ in pairs], [lv for _, lv, _ in pairs]
            if li in hidden:
                measured[li] = [m for _, _, m in pairs]
            for b in {id(b): b for b in old}.values():  # each stage's input, once, now that both ran
                b.drop()
            zipper.forget_inputs()
        zipped = [{o: lv.array(o) for o in ir.outputs} for ir, lv in zip(irs, live)]
        originals = [{o: x[:NOISE_SAMPLES] for o in ir.outputs
                      if isinstance(x := ref.array(o), np.ndarray) and x.dtype.kind == "f"}
                     for ir, ref in zip(irs, reference)]
    for li in range(len(irs[0].layers)):
        if li not in zipper.zips and li not in irs[0].spaces.plain:
            zipper.zips[li] = zipper.private_layer(li)
    return ZipPlan(zipper.zips, hidden, zipped, zipper.groups, zipper.orders, loss_aware=fisher is not None,
                   constants=constants, measured=measured, originals=originals)


def changes(ir: ModelIR, li: int, eff: dict[int, tuple[np.ndarray, np.ndarray]]) -> bool:
    """Whether the zipped weights of layer ``li`` differ from the task's original ones."""
    w, b = ir.weights(ir.layers[li])
    zw, zb = eff[li]
    return not (np.array_equal(zw, w) and np.array_equal(zb, b))


def restat_batchnorms(nets: list[StagedNetwork], irs: list[ModelIR], j: int, nodes: list, live: list[dict],
                      reference: list[dict], eff: list[dict], constants: list[dict[str, np.ndarray]]) -> None:
    """Re-estimate kept BatchNorms (by position: the same nodes in every task) in stage ``j``.

    Each BN's mean and variance are set so that, on the calibration data, its output has the
    per-channel mean and variance the original network's BN output has: with x the zipped input and
    r the original one, s' = s * std(x)/std(r) and mean' = mean(x) - s' (mean(r) - mean) / s, where
    s = sqrt(var + eps). Where x equals r nothing changes.
    """
    position = {n.name: i for i, n in enumerate(nets[0].nodes)}
    for t, (net, ir) in enumerate(zip(nets, irs)):
        own = [net.nodes[position[n.name]] for n in nodes]
        names = [n.inputs[0].name for n in own]
        got = moments(net.stream(j, live[t], eff[t], constants[t], names), names)
        ref = moments(net.stream(j, reference[t], {}, None, names), names)
        for node, name in zip(own, names):
            (x_mean, x_var, x_sums), (r_mean, r_var, r_sums) = got[name], ref[name]
            if np.array_equal(x_sums, r_sums):  # (the same input, as far as two moments tell)
                continue
            mean, var = (np.asarray(node.inputs[i].values, np.float64) for i in (3, 4))
            eps = float(node.attrs.get("epsilon", 1e-5))
            s = np.sqrt(var + eps)
            s_new = s * np.sqrt(x_var + 1e-12) / np.sqrt(r_var + 1e-12)
            mean_new = x_mean - s_new * (r_mean - mean) / s
            constants[t][node.inputs[3].name] = mean_new.astype(np.float32)
            constants[t][node.inputs[4].name] = np.maximum(s_new ** 2 - eps, 0.0).astype(np.float32)


def moments(batches: Iterable[dict[str, np.ndarray]], names: list[str]) -> dict[str, tuple]:
    """Per tensor (N, C, ...): per-channel mean and variance over samples and positions (float64),
    and the raw sums they came from."""
    sums: dict[str, np.ndarray] = {}
    for got in batches:
        for name in names:
            x = np.asarray(got[name], np.float64)
            axes = (0,) + tuple(range(2, x.ndim))
            part = np.stack([x.sum(axis=axes), (x ** 2).sum(axis=axes), np.full(x.shape[1], x.size / x.shape[1])])
            sums[name] = sums[name] + part if name in sums else part
    out = {}
    for name, (s1, s2, n) in sums.items():
        mean = s1 / n
        out[name] = (mean, np.maximum(s2 / n - mean ** 2, 0.0), sums[name])
    return out
