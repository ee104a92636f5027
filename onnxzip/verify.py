"""Every zip proves itself: the emitted model against what it must reproduce, at float32 reality,
then each task's fidelity against its original, measured and judged, and the report."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import runtime
from .errors import EquivalenceError
from .ir import ModelIR
from .report import count_parameters, fidelity, output_loss, verdict
from .zipper import ZipPlan

if TYPE_CHECKING:
    from .api import ZipOptions, ZipResult

log = logging.getLogger(__name__)
TOLERANCE = 1e-4  # equivalence: relative to the output's magnitude (at least 1)
NOISE_FACTOR = 20.0  # ... or this many times the model's own float noise under re-association
GROSS, SPREAD = 100.0, 0.01  # beyond GROSS tolerances, or at more than SPREAD of the elements: a bug


def verify(result: ZipResult, protos: list[onnx.ModelProto], irs: list[ModelIR],
           data: list[dict[str, np.ndarray]], opts: ZipOptions, check: bool = True) -> dict[str, Any]:
    """Run the zipped model on every task's calibration data and build the report.

    The zipped model must reproduce the per-task zipped networks (the original graphs with the
    merged weights, as run stage by stage) within a float tolerance calibrated on the model itself
    (:func:`check_equivalence`); with nothing shared it must reproduce the original models. A
    structural mismatch is a bug: :class:`EquivalenceError`. Each task's fidelity against its
    original is measured and judged (:func:`onnxzip.report.verdict`).
    """
    zipped = runtime.session(result.model, opts.device)
    equivalence, tolerance, noise, verdicts, tasks = 0.0, 0.0, 0.0, [], []
    shares_none = all(z.shared == 0 for z in result.plan.layers.values())
    for t, (proto, ir, arrays, name) in enumerate(zip(protos, irs, data, result.names)):
        feeds = zipped_feeds(zipped, result.inputs_for(t, arrays))
        outs = ir.outputs
        got = runtime.run(zipped, feeds, [f"{name}/{o}" for o in outs], opts.batch_size)
        original = runtime.run(runtime.session(proto, opts.device), arrays, outs, opts.batch_size)
        floats = [o for o in ir.tensor_outputs if np.asarray(original[o]).dtype.kind == "f"]
        normalized = runtime.run(runtime.session(ir.to_onnx(), opts.device), arrays, floats, opts.batch_size) \
            if floats else {}
        row: dict[str, Any] = {"name": name, "rel_err": None, "top1_agreement": None, "mask_iou": None,
                               "max_abs_diff": None}
        for o in outs:
            z, ref, orig = (as_array(x) for x in (got[f"{name}/{o}"], result.plan.outputs[t][o], original[o]))
            if z is None or z.dtype.kind != "f":
                continue
            own = float(np.max(np.abs(normalized[o] - orig))) if o in normalized and orig.size else 0.0
            noise = max(noise, own)
            where = f"task {name!r} output {o!r}"
            diff, tol, ok = check_equivalence(z, ref, own, f"{where}: the zipped model differs from the zipped network",
                                              check)
            equivalence, tolerance = max(equivalence, diff), max(tolerance, tol)
            verdicts.append(ok)
            if shares_none:
                verdicts.append(check_equivalence(z, orig, own, f"{where}: with nothing shared the zipped model "
                                                  "differs from the original", check)[2])
            if row["rel_err"] is None:
                row.update(fidelity(z, orig, opts.mask_threshold), output=o)
            increase, negligible = output_loss(z, orig)
            row["loss_increase"] = row.get("loss_increase", 0.0) + increase
            row["negligible_loss"] = row.get("negligible_loss", 0.0) + negligible
        if row["rel_err"] is not None:
            row["verdict"] = verdict(row)
        tasks.append(row)
    before = [count_parameters([np.asarray(t.values) for t in ir.graph.tensors().values()
                                if isinstance(t, gs.Constant)]) for ir in irs]
    after = count_parameters(list(result.model.graph.initializer))
    layers = []
    group_of = {i: g for g, members in enumerate(result.plan.groups) for i in members}
    for i in result.plan.hidden:
        z = result.plan.layers[i]
        layers.append({"name": irs[0].layers[i].name, "kind": irs[0].layers[i].kind, "neurons": z.neurons,
                       "shared": z.shared, "cost": float(z.costs.sum()), "group": group_of.get(i)})
    groups = [{"layers": [irs[0].layers[i].name for i in members], **result.plan.orders.get(g, {})}
              for g, members in enumerate(result.plan.groups) if len(members) > 1 or g in result.plan.orders]
    return {
        "tasks": tasks, "layers": layers,
        "params_before": sum(p for p, _ in before), "params_after": after[0],
        "bytes_before": sum(b for _, b in before), "bytes_after": after[1],
        "equivalence_max_abs_diff": equivalence,
        "equivalence": {"max_abs_diff": equivalence, "tolerance": tolerance, "float_noise": noise,
                        "verdict": "rounding" if "rounding" in verdicts else "ok"},
        "not_shared": not_shared(irs, result.plan, opts),
        "groups": groups,
        "restored_at": sorted(irs[0].spaces.restore),
        "options": {"share": opts.share, "matching": opts.matching, "hessian": opts.hessian,
                    "damping": opts.damping, "compensate": opts.compensate,
                    "recover": opts.recover, "loss_aware": opts.loss_aware},
        "samples": [int(next(iter(a.values())).shape[0]) for a in data],
    }


def check_equivalence(got: np.ndarray, ref: np.ndarray, noise: float, what: str, strict: bool = True
                      ) -> tuple[float, float, str]:
    """Compare an emitted output with what it must reproduce, at float32 reality.

    The tolerance is ``TOLERANCE`` times the output's magnitude, or ``NOISE_FACTOR`` times the
    model's own float noise (``noise``: its original against its normalized form, the same
    arithmetic re-associated), whichever is larger. Beyond it, a difference is rounding when it is
    both small (under ``GROSS`` tolerances) and rare (at most ``SPREAD`` of the elements): kept, and
    said in the report. Otherwise it is structural: :class:`EquivalenceError` (when ``strict``).

    Returns:
        (max abs difference, tolerance, "ok" | "rounding" | "mismatch").
    """
    diff = float(np.max(np.abs(got - ref))) if got.size else 0.0
    tol = max(TOLERANCE * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0), NOISE_FACTOR * noise)
    if diff <= tol:
        return diff, tol, "ok"
    over = float(np.mean(np.abs(got - ref) > tol))
    if diff <= GROSS * tol and over <= SPREAD:
        log.warning("%s by %.3g at %.2g%% of the elements (tolerance %.3g): float rounding, kept", what, diff,
                    100 * over, tol)
        return diff, tol, "rounding"
    if strict:
        raise EquivalenceError(f"{what} by {diff:.3g} at {100 * over:.2g}% of the elements (tolerance {tol:.3g}, "
                               f"the model's own float noise {noise:.3g}); this is an onnxzip bug")
    return diff, tol, "mismatch"


def not_shared(irs: list[ModelIR], plan: ZipPlan, opts: ZipOptions) -> list[dict[str, str]]:
    """Why layers share nothing: one row per hidden layer with no shared neuron, and the layers
    that are never zippable."""
    ir = irs[0]
    rows = []
    fractions = opts.share if isinstance(opts.share, tuple) else (opts.share,) * len(plan.groups)
    group_of = {i: g for g, members in enumerate(plan.groups) for i in members}
    for i in plan.hidden:
        if plan.layers[i].shared or i in ir.spaces.followers:
            continue
        g = group_of.get(i)
        if opts.target_params is not None or opts.max_loss_increase is not None:
            reason = "the budget shares none here (predicted loss per parameter saved too high)"
        elif g is not None and g < len(fractions) and fractions[g] == 0:
            continue  # asked for
        else:
            reason = f"share {fractions[g] if g is not None and g < len(fractions) else '?'} of " \
                     f"{ir.layers[i].neurons} neurons rounds to none"
        rows.append({"layer": ir.layers[i].name, "reason": reason})
    for i in sorted(ir.spaces.plain):
        rows.append({"layer": ir.layers[i].name, "reason": "grouped convolution on restored channels: replayed as an "
                     "ordinary op"})
    if not plan.hidden:
        rows.append({"layer": "-", "reason": "no layer's channels reach another layer (only heads: nothing to share)"})
    return rows


def as_array(x: Any) -> np.ndarray | None:
    """An output as a float array: tensors as they are, skl2onnx's ZipMap (a list of dicts) as
    (N, classes) in key order; None for anything else."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, list) and x and isinstance(x[0], dict):
        keys = sorted(x[0])
        return np.array([[d[k] for k in keys] for d in x], np.float64)
    return None


def zipped_feeds(sess, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feed the zipped model: the task's inputs, zeros for the other tasks' inputs."""
    n = next(iter(feeds.values())).shape[0]
    out = {}
    for i in sess.get_inputs():
        if i.name in feeds:
            out[i.name] = feeds[i.name]
        else:
            shape = [n] + [d if isinstance(d, int) else 1 for d in i.shape[1:]]
            out[i.name] = np.zeros(shape, dtype=np.float32 if "float" in i.type else np.int64)
    return out


def warn_fidelity(report: dict[str, Any], opts: ZipOptions) -> None:
    """Say loudly when a task collapsed, and when nothing could be shared although sharing was asked."""
    for row in report["tasks"]:
        if row.get("verdict") == "collapsed":
            what = (f"top-1 agreement {row['top1_agreement']:.3f}" if row.get("top1_agreement") is not None else
                    f"mask IoU {row['mask_iou']:.3f} (fires {row['fired'] or 0:.0%} as often)"
                    if row.get("mask_iou") is not None else f"relative error {row['rel_err']:.3g}")
            log.warning("task %r COLLAPSED against its original on the calibration data: %s; share less (a lower "
                        "--share or --target-params, or 0 for the layer groups that cost most)", row["name"], what)
    asked = opts.target_params is not None or opts.max_loss_increase is not None or \
        any(f > 0 for f in (opts.share if isinstance(opts.share, tuple) else (opts.share,)))
    if asked and not any(layer["shared"] for layer in report["layers"]):
        reasons = "; ".join(f"{r['layer']}: {r['reason']}" for r in report["not_shared"]) or "no zippable layer"
        log.warning("nothing is shared: %s", reasons)
