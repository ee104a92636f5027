"""The bottom-up layer loop: statistics -> match and merge -> next stage, for two tasks.

Every task's network is run stage by stage (:mod:`onnxzip.stages`) with the layers already zipped
in place, so the Hessians of layer ``l`` come from the network as zipped below ``l`` and each node
sees the calibration set once.

Weights are handled as 2-D matrices: a layer of ``n`` neurons and fan-in ``d`` is (n, d + 1) with
the bias as the last column (ONNX order: channel-major, kernel offsets inner). Zipped order puts
the shared rows first and the columns as ``[shared inputs, bias | private inputs]``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from .errors import UsageError
from .ir import ChannelSpace, Layer, ModelIR
from .merge import damp, zip_layer
from .plan import shared_counts
from .stages import StagedNetwork
from .stats import layer_hessian

log = logging.getLogger(__name__)


@dataclass
class LayerZip:
    """One layer of the zipped model, for every task.

    ``rows[t]`` gives, per zipped row, the task's original neuron index; ``cols[t]`` per zipped
    column the original column index (``fan_in`` is the bias). ``weights[t]`` (n, d + 1) is in
    zipped order and ``weights[t][:shared, :ns]`` is the same for every task.
    """

    layer: int
    shared: int
    ns: int
    rows: list[np.ndarray]
    cols: list[np.ndarray]
    weights: list[np.ndarray]
    costs: np.ndarray

    @property
    def neurons(self) -> int:
        return self.weights[0].shape[0]


@dataclass
class ZipPlan:
    """Every layer's zip (hidden layers and private heads) and the zipped tasks' outputs."""

    layers: dict[int, LayerZip]
    hidden: list[int]
    outputs: list[dict[str, np.ndarray]]  # per task, on the calibration data


def as_matrix(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(W of shape (n, ...), b (n,)) -> (n, fan_in + 1) float64 with the bias last."""
    return np.concatenate([w.reshape(w.shape[0], -1), b[:, None]], axis=1).astype(np.float64)


def from_matrix(m: np.ndarray, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`as_matrix` for ``layer``'s weight shape."""
    return m[:, :-1].reshape((m.shape[0],) + layer.shape[1:]), m[:, -1]


def column_order(ir: ModelIR, index: int, zips: dict[int, LayerZip], task: int) -> tuple[np.ndarray, int]:
    """Zipped column order of layer ``index`` in task ``task``, and how many lead columns are shared.

    A layer fed by a graph input (no channel space) shares every input column; one fed by a
    zipped layer shares the columns of that layer's shared channels.
    """
    layer = ir.layers[index]
    d = layer.fan_in
    space: ChannelSpace | None = ir.spaces.get(layer.input)
    if space is None:
        return np.arange(d + 1), d + 1
    src = zips[space.layer]
    per_channel = space.block * layer.kernel
    perm = src.rows[task]

    def expand(channels: np.ndarray) -> np.ndarray:
        return (channels[:, None] * per_channel + np.arange(per_channel)).reshape(-1)

    shared = expand(perm[:src.shared])
    return np.concatenate([shared, [d], expand(perm[src.shared:])]), shared.size + 1


def zip_tasks(irs: list[ModelIR], data: list[dict[str, np.ndarray]], share, *, matching: str = "optimal",
              hessian: str = "channel", damping: float = 1e-2, compensate: bool = True, device: str = "cpu",
              batch: int = 64,
              progress: Callable[[Iterable, str], Iterable] = lambda it, desc: it) -> ZipPlan:
    """Zip two aligned tasks layer by layer.

    Args:
        irs: the tasks (aligned: same layers in the same order).
        data: per task, the calibration arrays by input name.
        share: fraction of each hidden layer's neurons to share (float or one per hidden layer).
        matching, hessian, damping, compensate: see :func:`onnxzip.merge.zip_layer` and ``ZipOptions``.
    """
    if len(irs) != 2:
        raise UsageError(f"onnxzip zips two models at a time; got {len(irs)}")
    hidden = irs[0].hidden
    names = [irs[0].layers[i].name for i in hidden]
    counts = shared_counts(share, [min(ir.layers[i].neurons for ir in irs) for i in hidden], names)
    nets = [StagedNetwork(ir, hidden, device, batch) for ir in irs]
    live = [net.run_stage(0, d, {}) for net, d in zip(nets, data)]
    zips: dict[int, LayerZip] = {}
    effective: list[dict[int, tuple[np.ndarray, np.ndarray]]] = [{} for _ in irs]
    for j, (li, k) in enumerate(progress(list(zip(hidden, counts)), "zipping layers")):
        zips[li] = _zip_one(irs, live, zips, li, k, matching, hessian, damping, compensate)
        for t, ir in enumerate(irs):
            z = zips[li]
            full = np.empty_like(z.weights[t])
            full[np.ix_(z.rows[t], z.cols[t])] = z.weights[t]
            effective[t][li] = from_matrix(full, ir.layers[li])
        live = [net.run_stage(j + 1, lv, eff) for net, lv, eff in zip(nets, live, effective)]
    for li in range(len(irs[0].layers)):
        if li not in zips:
            zips[li] = _private_layer(irs, zips, li)
    return ZipPlan(zips, hidden, live)


def _zip_one(irs: list[ModelIR], live: list[dict[str, np.ndarray]], zips: dict[int, LayerZip], li: int, k: int,
             matching: str, hessian: str, damping: float, compensate: bool) -> LayerZip:
    mats, hs, cols = [], [], []
    ns = 0
    for t, ir in enumerate(irs):
        layer = ir.layers[li]
        order, ns = column_order(ir, li, zips, t)
        h = layer_hessian(layer, live[t][layer.input], hessian)
        hs.append(damp(h[np.ix_(order, order)], damping))
        mats.append(as_matrix(*ir.weights(layer))[:, order])
        cols.append(order)
    m = zip_layer(mats[0], mats[1], hs[0], hs[1], ns, k, matching, compensate)
    rows, weights = [], []
    for mat, idx, priv in ((mats[0], m.ia, m.private_a), (mats[1], m.ib, m.private_b)):
        rest = np.setdiff1d(np.arange(mat.shape[0]), idx)
        order = np.concatenate([idx, rest]).astype(np.int64)
        z = mat[order].copy()
        z[:k, :ns] = m.shared
        z[:k, ns:] = priv
        rows.append(order)
        weights.append(z)
    log.info("layer %s: %d of %d neurons shared, cost %.4g", irs[0].layers[li].name, k, mats[0].shape[0],
             float(m.costs.sum()))
    return LayerZip(li, k, ns, rows, cols, weights, m.costs)


def _private_layer(irs: list[ModelIR], zips: dict[int, LayerZip], li: int) -> LayerZip:
    """A layer nothing is shared in (a head): each task's own weights, columns in zipped order."""
    rows, cols, weights = [], [], []
    ns = 0
    for t, ir in enumerate(irs):
        order, ns = column_order(ir, li, zips, t)
        mat = as_matrix(*ir.weights(ir.layers[li]))
        rows.append(np.arange(mat.shape[0]))
        cols.append(order)
        weights.append(mat[:, order])
    return LayerZip(li, 0, ns, rows, cols, weights, np.zeros(0))
