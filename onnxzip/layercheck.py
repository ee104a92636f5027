"""The merge checked independently: each zipped layer's pre-activation error, measured in ONNX Runtime.

The equivalence check (:mod:`onnxzip.verify`) proves that the emitted graph computes what the
zipper planned. This proves the plan itself: for every hidden layer and task, the zipped model's
pre-activation (emitted with probe outputs, restored to the task's channel order) is compared in ORT
with the original network's (its normalized graph), on the calibration data. The error is the mean
over samples and positions of the squared difference summed over the layer's neurons, the units of
the zipper's statistics, and ``signal`` the same mean of the original's squared pre-activation.

Where a layer's input is the original one in every task and its statistic is exact, the zipper's
``predicted`` error (d' H d over the merged rows) is not an estimate but the same number computed
another way (patch statistics in numpy against convolutions in ORT): a mismatch is a bug
(:class:`onnxzip.errors.EquivalenceError`). Elsewhere the measured error also holds what earlier
layers passed on, and both are reported for reading.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper

from . import runtime
from .emit import PROBE, emit_model
from .errors import EquivalenceError
from .ir import ModelIR, batch_within
from .verify import task_sessions

if TYPE_CHECKING:
    from .api import ZipOptions, ZipResult

CHECK_RTOL = 2e-2  # measured vs predicted, relative, where the prediction is exact (float32 runs)
CHECK_FLOOR = 1e-8  # ... plus this fraction of the layer's signal (float32 rounding of both runs)
PROBE_BATCH = 16  # samples per run: probes hold every layer's pre-activation at once
RUN_BYTES = 256 << 20  # ... and fewer where one batch's activations would pass this


def measure_layers(result: ZipResult, irs: list[ModelIR], data: list[dict[str, np.ndarray]], opts: ZipOptions,
                   shared_inputs: bool) -> list[dict[str, Any]]:
    """Per hidden layer (the report's order): per task the predicted and measured error and the
    signal; raises :class:`EquivalenceError` where an exact prediction is not met."""
    plan = result.plan
    layers = list(plan.hidden)
    probe = emit_model(irs, plan, result.names, shared_inputs, probes=layers)
    measured: list = [None] * len(irs)
    for group, zipped, feeds in task_sessions(result, probe, data, opts.device):
        got = [f"{result.names[t]}/{PROBE}/{irs[t].layers[li].name}" for t in group for li in layers]
        want = [[irs[t].layers[li].output for li in layers] for t in group]
        originals = [(runtime.session(_with_outputs(irs[t], w), opts.device, built=True), data[t], w)
                     for t, w in zip(group, want)]
        neurons = [[irs[t].layers[li].neurons for li in layers] for t in group]
        batch = min(batch_within(irs[t], min(opts.batch_size, PROBE_BATCH), RUN_BYTES // len(group)) for t in group)
        for t, m in zip(group, _errors(zipped, feeds, got, originals, neurons, batch)):
            measured[t] = m
        del zipped, originals
    rows = []
    for n, li in enumerate(layers):
        z = plan.layers[li]
        err = [m[0][n] for m in measured]
        signal = [m[1][n] for m in measured]
        row = {"predicted": z.predicted, "measured": err, "signal": signal, "exact": z.checkable}
        if z.checkable:
            for t, (p, e, s) in enumerate(zip(z.predicted, err, signal)):
                if abs(e - p) > CHECK_RTOL * p + CHECK_FLOOR * s:
                    raise EquivalenceError(
                        f"merge check: layer {irs[0].layers[li].name!r} of task {result.names[t]!r}: measured "
                        f"pre-activation error {e:.4g} in ONNX Runtime, but the merge predicted exactly {p:.4g} (signal {s:.4g}): "
                        "the layer statistics or the merge are wrong; this is an onnxzip bug")
        rows.append(row)
    return rows


def _with_outputs(ir: ModelIR, tensors: list[str]) -> onnx.ModelProto:
    """The task's normalized graph with ``tensors`` as extra float outputs."""
    model = ir.to_onnx()
    present = {o.name for o in model.graph.output}
    for name in dict.fromkeys(tensors):
        if name not in present:
            model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model


def _errors(zipped, zipped_feeds: dict[str, np.ndarray], got: list[str], originals: list[tuple], neurons: list[list[int]],
            batch: int) -> list[tuple[list[float], list[float]]]:
    """Per task of ``originals`` ((session, feeds, tensors) each; ``got`` holds the zipped model's
    probes for them in the same order) and per layer, streamed over batches (float64 sums): mean
    over samples and positions of sum_neurons (zipped - original)^2, and of sum_neurons original^2."""
    count = len(neurons[0])
    err, sig, n = np.zeros((len(originals), count)), np.zeros((len(originals), count)), 0
    runs = [runtime.run_batches(sess, feeds, want, batch) for sess, feeds, want in originals]
    for z_batch, *o_batches in zip(runtime.run_batches(zipped, zipped_feeds, got, batch), *runs):
        for t, o_batch in enumerate(o_batches):
            for i, (z, o) in enumerate(zip(z_batch[t * count:(t + 1) * count], o_batch)):
                d, o = (np.asarray(z) - np.asarray(o)).ravel(), np.asarray(o).ravel()  # float32 (Sterbenz: exact
                positions = max(1, o.size // len(o_batch[0]) // neurons[t][i])       # where z and o are close)
                err[t, i] += float(np.dot(d, d)) / positions  # (BLAS sums: relative error ~1e-6, per batch)
                sig[t, i] += float(np.dot(o, o)) / positions
        n += len(o_batches[0][0])
    return [(list(e / n), list(s / n)) for e, s in zip(err, sig)]
