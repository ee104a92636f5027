"""Recovery without labels: the zipped network made to reproduce the original's pre-activations.

Least-squares refits of each layer's targets live with the layer's problem
(:func:`onnxzip.sharing.problem.refit`, :func:`onnxzip.sharing.lowrank.woodbury_refit`); here are
the BatchNorms kept in the graph, re-estimated so that their outputs keep the original moments.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..calibrate.stages import StagedNetwork
from ..graph.ir import ModelIR
from ..graph.spaces import LAYER_AXIS


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
            var_new = np.maximum(s_new ** 2 - eps, 0.0)
            # the scale the BN will divide by: s_new, or sqrt(eps) where the variance collapsed (clipped)
            scale = np.where(s_new ** 2 > eps, s_new, np.sqrt(eps))
            mean_new = x_mean - scale * (r_mean - mean) / s
            constants[t][node.inputs[3].name] = mean_new.astype(np.float32)
            constants[t][node.inputs[4].name] = var_new.astype(np.float32)


def moments(batches: Iterable[dict[str, np.ndarray]], names: list[str]) -> dict[str, tuple]:
    """Per tensor (N, C, ...): per-channel mean and variance over samples and positions (float64),
    and the raw sums they came from."""
    sums: dict[str, np.ndarray] = {}
    for got in batches:
        for name in names:
            x = np.asarray(got[name], np.float64)
            axes = tuple(a for a in range(x.ndim) if a != LAYER_AXIS)
            c = x.shape[LAYER_AXIS]
            part = np.stack([x.sum(axis=axes), (x ** 2).sum(axis=axes), np.full(c, x.size / c)])
            sums[name] = sums[name] + part if name in sums else part
    out = {}
    for name, (s1, s2, n) in sums.items():
        mean = s1 / n
        out[name] = (mean, np.maximum(s2 / n - mean ** 2, 0.0), sums[name])
    return out
