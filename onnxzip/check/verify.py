"""Every zip proves itself: the emitted model against what it must reproduce, at float32 reality,
then each task's fidelity against its original, measured and judged, and the report."""
from __future__ import annotations

import logging
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from ..calibrate import runtime
from ..errors import EquivalenceError
from ..graph import io
from ..graph.attention import describe_blocks, find_attention
from ..graph.ir import ModelIR, batch_within
from ..report.records import Equivalence, GroupRow, LayerRow, NotShared, TaskRow, ZipReport, not_shared_lines
from ..sharing.plan import ZipPlan
from .fidelity import NOT_JUDGED, TOO_FEW, count_parameters, fidelity, output_loss, verdict

if TYPE_CHECKING:
    from ..options import ZipOptions
    from ..result import ZipResult

log = logging.getLogger(__name__)
TOLERANCE = 1e-4  # equivalence: relative to the output's magnitude (at least 1)
NOISE_FACTOR = 20.0  # ... or this many times the model's own float noise under re-association
MAX_TOLERANCE = 2e-3  # ... but never more than this, relative to the magnitude
NORMALIZED_BOUND = 1e-3  # the normalized model against the original file: beyond this, a bug
GROSS, SPREAD, ROUNDING_CAP = 10.0, 0.01, 1e-2  # rounding: under GROSS tolerances and ROUNDING_CAP of the
#                                               magnitude, at most SPREAD of the elements; else a bug


def verify(result: ZipResult, irs: list[ModelIR], data: list[dict[str, np.ndarray]], opts: ZipOptions,
           references: list[dict[str, Any]], check: bool = True,
           held: tuple[list[dict[str, np.ndarray]], list[dict[str, Any]]] | None = None) -> ZipReport:
    """Run the zipped model on every task's calibration data and build the report.

    The zipped model must reproduce the per-task zipped networks (the original graphs with the
    merged weights, as run stage by stage) within a float tolerance calibrated on the model itself
    (:func:`check_equivalence`); with nothing shared it must reproduce the original models. A
    structural mismatch is a bug: :class:`EquivalenceError`. Each task's fidelity against its
    original is measured and judged (:func:`onnxzip.check.fidelity.verdict`) on ``held`` (the held-out
    inputs and the originals' outputs on them) where every task has some; else on ``data``, and
    then no verdict is given (:data:`onnxzip.check.fidelity.TOO_FEW`). ``references``: the original
    files' outputs on ``data`` (:func:`onnxzip.tasks.reference_outputs`); the float noise compares them with the
    original networks' as the layer loop ran them (normalized, stage by stage: ``plan.originals``).
    """
    got = run_tasks(result, irs, data, opts)
    checks: list[tuple[float, float, float, str]] = []  # (diff, tolerance, float noise, verdict)
    shares_none = all(z.shared == 0 for z in result.plan.layers.values())
    for t, (ir, name, original) in enumerate(zip(irs, result.names, references)):
        normalized = result.plan.originals[t] if result.plan.originals else {}
        for o in ir.outputs:
            z, ref, orig = (as_array(x) for x in (got[f"{name}/{o}"], result.plan.outputs[t][o], original[o]))
            if z is None or z.dtype.kind != "f":
                continue
            where = f"task {name!r} output {o!r}"
            noise = float_noise(normalized.get(o), orig, where, check)
            diff, tol, ok = check_equivalence(z, ref, noise, f"{where}: the zipped model differs from the zipped "
                                              "network", check)
            checks.append((diff, tol, noise, ok))
            if shares_none:
                diff, tol, ok = check_equivalence(z, orig, noise, f"{where}: with nothing shared the zipped model "
                                                  "differs from the original", check)
                checks.append((diff, tol, noise, ok))
    if held is not None and all(held[0]):
        tasks = task_rows(result, irs, run_tasks(result, irs, held[0], opts), held[1], opts, held_out=True)
    else:
        tasks = task_rows(result, irs, got, references, opts, held_out=False)
    worst = [c[3] for c in checks]
    equivalence = Equivalence(max((c[0] for c in checks), default=0.0), max((c[1] for c in checks), default=0.0),
                              max((c[2] for c in checks), default=0.0),
                              next((v for v in ("mismatch", "rounding") if v in worst), "ok") if check else "not checked")
    before = [ir.file_params or count_parameters([np.asarray(t.values) for t in ir.graph.tensors().values()
                                                  if isinstance(t, gs.Constant)]) for ir in irs]
    after = count_parameters(list(result.model.graph.initializer))
    layers, groups = _layer_rows(irs[0], result.plan)
    return ZipReport(tasks, layers, sum(p for p, _ in before), after[0], sum(b for _, b in before), after[1],
                     equivalence, not_shared(irs, result.plan, opts), groups, sorted(irs[0].spaces.restore),
                     describe_blocks(irs[0], find_attention(irs[0]), ties=True),
                     [int(next(iter(a.values())).shape[0]) for a in data])


def run_tasks(result: ZipResult, irs: list[ModelIR], data: list[dict[str, np.ndarray]], opts: ZipOptions
              ) -> dict[str, Any]:
    """The zipped model's outputs ``<task>/<output>``, each task on its own inputs in ``data``."""
    got: dict[str, Any] = {}
    for group, zipped, feeds in task_sessions(result, data, opts.device):
        batch = min(batch_within(irs[t], opts.batch_size, runtime.RUN_BYTES // len(group)) for t in group)
        got.update(runtime.run(zipped, feeds, [f"{result.names[t]}/{o}" for t in group for o in irs[t].outputs],
                               batch, "the zipped model", built=True))
        del zipped
    return got


def task_rows(result: ZipResult, irs: list[ModelIR], got: dict[str, Any], references: list[dict[str, Any]],
              opts: ZipOptions, held_out: bool) -> list[TaskRow]:
    """Each task's fidelity against its original (the metrics of its first float output, the loss
    increase summed over them) and verdict. Not ``held_out`` (measured on the samples the zip was
    fitted to, an optimistic measure), only a bad verdict stands; an ``ok`` there is :data:`TOO_FEW`."""
    rows = []
    for ir, name, original in zip(irs, result.names, references):
        row = TaskRow(name, held_out=held_out)
        for o in ir.outputs:
            z, orig = as_array(got[f"{name}/{o}"]), as_array(original[o])
            if z is None or z.dtype.kind != "f":
                continue
            if not row.measured:
                row = replace(row, output=o, **asdict(fidelity(z, orig, opts.mask_threshold, output_kind(ir, o, orig))))
            row.loss_increase += output_loss(z, orig)
        if row.measured:
            row.verdict = verdict(row)
            if not held_out and row.verdict == "ok":
                row.verdict = NOT_JUDGED if not opts.hold_out else TOO_FEW
        rows.append(row)
    return rows


def _layer_rows(ir: ModelIR, plan: ZipPlan) -> tuple[list[LayerRow], list[GroupRow]]:
    """The report's rows per hidden layer (sharing and cost) and per tied group (or chosen order)."""
    group_of = {i: g for g, members in enumerate(plan.groups) for i in members}
    layers = [LayerRow(ir.layers[i].name, ir.layers[i].kind, plan.layers[i].neurons, plan.layers[i].shared,
                       float(plan.layers[i].costs.sum()), group_of.get(i), round(plan.layers[i].rows_read, 4),
                       plan.layers[i].stat_rows)
              for i in plan.hidden]
    groups = [GroupRow([ir.layers[i].name for i in members], plan.orders.get(g), g)
              for g, members in enumerate(plan.groups) if len(members) > 1 or g in plan.orders]
    return layers, groups


def float_noise(normalized: np.ndarray | None, original: np.ndarray, where: str, strict: bool = True) -> float:
    """The model's own float noise on one output: its normalized form (BN folded, constants folded,
    the same arithmetic re-associated) against the original file in ONNX Runtime, max abs over the
    elements of the samples ``normalized`` holds (the first ones). It must stay within ``NORMALIZED_BOUND`` of the output's magnitude: more is not noise
    but a normalization bug (:class:`EquivalenceError`), never a looser tolerance."""
    if normalized is None or not original.size:
        return 0.0
    noise = float(np.max(np.abs(np.asarray(normalized, np.float64) - original[:len(normalized)])))
    bound = NORMALIZED_BOUND * max(1.0, float(np.max(np.abs(original))))
    if noise > bound and strict:
        raise EquivalenceError(f"{where}: the normalized model differs from the original file by {noise:.3g} "
                               f"(> {bound:.3g}); this is an onnxzip bug")
    return min(noise, bound)


def check_equivalence(got: np.ndarray, ref: np.ndarray, noise: float, what: str, strict: bool = True
                      ) -> tuple[float, float, str]:
    """Compare an emitted output with what it must reproduce, at float32 reality.

    Args:
        got, ref: the same output, any shape, float; ``noise``: the model's own float noise there
            (:func:`float_noise`), in the output's units.
    Returns:
        (max abs difference, tolerance, "ok" | "rounding" | "mismatch"). With s = max(1, max|ref|),
        the tolerance is the larger of ``TOLERANCE`` s and ``NOISE_FACTOR`` x noise, capped at
        ``MAX_TOLERANCE`` s. Beyond it, a difference is rounding when it is rare (at most ``SPREAD``
        of the elements) and small (under ``GROSS`` tolerances and ``ROUNDING_CAP`` s): kept and said.
        Anything else is structural: :class:`EquivalenceError` when ``strict``.
    """
    diff = float(np.max(np.abs(got - ref))) if got.size else 0.0
    scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
    tol = min(max(TOLERANCE * scale, NOISE_FACTOR * noise), MAX_TOLERANCE * scale)
    if diff <= tol:
        return diff, tol, "ok"
    over = float(np.mean(np.abs(got - ref) > tol))
    if diff <= min(GROSS * tol, ROUNDING_CAP * scale) and over <= SPREAD:
        log.warning("%s by %.3g at %.2g%% of the elements (tolerance %.3g): float rounding, kept", what, diff,
                    100 * over, tol)
        return diff, tol, "rounding"
    if strict:
        raise EquivalenceError(f"{what} by {diff:.3g} at {100 * over:.2g}% of the elements (tolerance {tol:.3g}, "
                               f"the model's own float noise {noise:.3g}); this is an onnxzip bug")
    return diff, tol, "mismatch"


#: ops that only move values around between a graph output and the op that computed it
_PASS_THROUGH = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})


def output_kind(ir: ModelIR, name: str, value: np.ndarray) -> str:
    """How to judge an output: "scores" (made by a Sigmoid/HardSigmoid: detector scores,
    probability maps, compared as masks), "classifier" (made by a Softmax, or (N, C>1)), or
    "values" (relative error)."""
    producers = {t.name: n for n in ir.graph.nodes for t in n.outputs}
    node = producers.get(name)
    while node is not None and node.op in _PASS_THROUGH:
        node = producers.get(node.inputs[0].name)
    op = node.op if node is not None else None
    if op in ("Sigmoid", "HardSigmoid"):
        return "scores"
    if op in ("Softmax", "LogSoftmax") or (value.ndim == 2 and value.shape[1] > 1):
        return "classifier"
    return "values"


def not_shared(irs: list[ModelIR], plan: ZipPlan, opts: ZipOptions) -> list[NotShared]:
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
        unit = ir.spaces.unit(i)
        if opts.target_params is not None and opts.target_params >= 1.0:
            reason = "--target-params 1 keeps every parameter"
        elif opts.target_params is not None or opts.max_loss_increase is not None:
            reason = "the budget shares none here (predicted loss per parameter saved too high)"
        elif g is not None and g < len(fractions) and fractions[g] == 0:
            continue  # asked for
        else:
            share = fractions[g] if g is not None and g < len(fractions) else "?"
            reason = f"share {share} of {ir.layers[i].neurons} neurons rounds to none" if unit == 1 else \
                f"share {share} of {ir.layers[i].neurons // unit} attention heads ({unit} neurons each, shared whole) " \
                "rounds to none"
        rows.append(NotShared(ir.layers[i].name, reason))
    for i in sorted(ir.spaces.plain):
        rows.append(NotShared(ir.layers[i].name, "grouped convolution on restored channels: replayed as an ordinary op"))
    if not plan.hidden:
        rows.append(NotShared("-", "no layer's channels reach another layer (only heads: nothing to share)"))
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


def data_groups(data: list[dict[str, np.ndarray]]) -> list[list[int]]:
    """The tasks grouped by calibration data: the same arrays (by input name) in one group."""
    groups: list[list[int]] = []
    for t, arrays in enumerate(data):
        home = next((g for g in groups if _same_arrays(data[g[0]], arrays)), None)
        if home is None:
            groups.append([t])
        else:
            home.append(t)
    return groups


def _same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a is b or (a.keys() == b.keys() and all(
        a[k] is b[k] or (a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]))
        for k in a))


def task_sessions(result: ZipResult, data: list[dict[str, np.ndarray]], device: str
                  ) -> Iterator[tuple[list[int], Any, dict[str, np.ndarray]]]:
    """Per group of tasks with the same calibration data (:func:`data_groups`): the zipped model
    cut to the group's outputs, as a session, and its feeds. One run serves the group, and no
    task's nodes run on another's data."""
    model = result.model
    for group in data_groups(data):
        if len(group) < len(data):
            prefixes = tuple(f"{result.names[t]}/" for t in group)
            part = io.pruned(model, [o.name for o in model.graph.output if o.name.startswith(prefixes)])
        else:
            part = model
        sess = runtime.session(part, device, built=True)
        del part
        feeds: dict[str, np.ndarray] = {}
        for t in group:
            feeds.update(result.inputs_for(t, data[t]))
        yield group, sess, zipped_feeds(sess, feeds)


def zipped_feeds(sess, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feed the zipped model: the task's inputs, zeros for the other tasks' inputs (an open size
    named like one of the task's takes its size)."""
    n = next(iter(feeds.values())).shape[0]
    specs = sess.get_inputs()
    sizes = {d: size for i in specs if i.name in feeds for d, size in zip(i.shape, feeds[i.name].shape)
             if isinstance(d, str)}
    return {i.name: feeds[i.name] if i.name in feeds else runtime.zeros(i, n, sizes) for i in specs}


def warn_fidelity(report: ZipReport, opts: ZipOptions) -> None:
    """Say loudly when a task collapsed, and when nothing could be shared although sharing was asked."""
    for row in report.tasks:
        if row.verdict == "collapsed":
            fired = "" if row.fired is None else f" (fires {row.fired:.0%} as often)"
            what = (f"top-1 agreement {row.top1_agreement:.3f}" if row.top1_agreement is not None else
                    f"mask IoU {row.mask_iou:.3f}{fired}" if row.mask_iou is not None
                    else f"relative error {row.rel_err:.3g}")
            log.warning("task %r COLLAPSED against its original on held-out data: %s; share less (a lower "
                        "--share or --target-params, or 0 for the layer groups that cost most)", row.name, what)
    budget = opts.target_params is not None or opts.max_loss_increase is not None
    asked = (opts.target_params or 0.0) < 1.0 if budget else \
        any(f is not None and f > 0 for f in (opts.share if isinstance(opts.share, tuple) else (opts.share,)))
    if asked and not any(layer.shared for layer in report.layers):
        reasons = "; ".join(not_shared_lines(report.not_shared)) or "no zippable layer"
        log.warning("nothing is shared: %s", reasons)
