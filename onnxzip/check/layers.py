"""The merge checked independently: each zipped layer's pre-activation error, measured in ONNX Runtime.

The equivalence check (:mod:`onnxzip.check.verify`) proves that the emitted graph computes what the
zipper planned. This proves the plan itself: while zipping, every stage of each task's network runs
in ONNX Runtime twice, with the zipped weights on the zipped network's tensors and with the
original weights on the original's (:meth:`onnxzip.calibrate.stages.StagedNetwork.run_pair`), and every
hidden layer's two pre-activations are compared on the calibration data. The error is the mean over
samples and positions of the squared difference summed over the layer's neurons, the units of the
layer loop's statistics, and ``signal`` the same mean of the original's squared pre-activation.

Where a layer's input is the original one in every task and its statistic is exact, the layer loop's
``predicted`` error (d' H d over the merged rows) is not an estimate but the same number computed
another way (patch statistics in numpy against convolutions in ORT): a mismatch is a bug
(:class:`onnxzip.errors.EquivalenceError`). Elsewhere the measured error also holds what earlier
layers passed on, and both are reported for reading.
"""
from __future__ import annotations

from ..errors import EquivalenceError
from ..graph.ir import ModelIR
from ..report.records import LayerError
from ..sharing.plan import ZipPlan

CHECK_RTOL = 2e-2  # measured vs predicted, relative, where the prediction is exact (float32 runs)
CHECK_FLOOR = 1e-8  # ... plus this fraction of the layer's signal (float32 rounding of both runs)


def measure_layers(plan: ZipPlan, irs: list[ModelIR], names: list[str]) -> list[LayerError]:
    """Per hidden layer (the report's order): per task the predicted and measured error and the
    signal; raises :class:`EquivalenceError` where an exact prediction is not met."""
    rows = []
    for li in plan.hidden:
        z = plan.layers[li]
        err = [e for e, _ in plan.measured[li]]
        signal = [s for _, s in plan.measured[li]]
        row = LayerError(z.predicted, err, signal, z.checkable)
        if z.checkable:
            for t, (p, e, s) in enumerate(zip(z.predicted, err, signal)):
                if abs(e - p) > CHECK_RTOL * p + CHECK_FLOOR * s:
                    raise EquivalenceError(
                        f"merge check: layer {irs[0].layers[li].name!r} of task {names[t]!r}: measured "
                        f"pre-activation error {e:.4g} in ONNX Runtime, but the merge predicted exactly {p:.4g} (signal {s:.4g}): "
                        "the layer statistics or the merge are wrong; this is an onnxzip bug")
        rows.append(row)
    return rows
