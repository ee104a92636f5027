"""The public pipeline: load -> normalize -> align -> calibrate/zip -> emit -> verify/report.

``zip_models`` runs it: :func:`onnxzip.tasks.prepare` (load, normalize, align, the originals' outputs),
then :func:`onnxzip.pipeline.zip_once` (the layer loop, emit, checks) and ``--distill``, or
:func:`onnxzip.budgets.zip_within_budget` (several, measured), then :func:`retrain` where asked,
then the report's lint and provenance."""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnx

from . import __version__, images, timing
from .budgets import zip_within_budget
from .calibrate import runtime
from .check.verify import run_tasks, task_rows, warn_fidelity, zipped_feeds
from .errors import InputError, UsageError
from .graph import io
from .graph.lint import deployment_problems
from .options import ZipOptions
from .pipeline import distil, measure_again, rounded, zip_once
from .progress import progress
from .report.records import DistillRecord, FinetuneRecord, FloorRecord, InputRecord, TaskRow, ZipReport
from .result import ZipResult
from .sharing.loop import samples_of
from .sharing.memory import memory_by_design
from .stamp import check_originals, stamp
from .tasks import Data, Models, Tasks, prepare
from .tune.distill import distill

log = logging.getLogger(__name__)


def zip_models(models: Models, data: Data, options: ZipOptions | None = None, **overrides: Any) -> ZipResult:
    """Zip same-architecture models into one multi-task model.

    Args:
        models: ONNX files or ModelProtos (not modified).
        data: per model, calibration arrays (a ``.npz``/``.npy`` path or a dict input name -> (N, ...)).
        options: a :class:`ZipOptions`; keyword overrides (e.g. ``share=0.5``) replace its fields.
    """
    opts = replace(options or ZipOptions(), **overrides)
    say = None if opts.quiet else (lambda what: print(f"onnxzip: {what}", file=sys.stderr, flush=True))
    with timing.record(say) as phases:
        result = _zip(models, data, opts)
        peak_phase = timing.peak_phase(phases)
    result.summary.phases = {k: round(v, 3) for k, v in phases.items()}
    result.summary.peak_rss_mb = round(timing.peak_rss_mb(), 1)
    result.summary.peak_phase = peak_phase
    if result.summary.seconds and phases.get("originals"):
        gflop = sum(z.stat_flops for z in result.plan.layers.values()) / 1e9
        rate = timing.gemm_gflops()
        result.summary.floor = FloorRecord(result.summary.seconds, round(phases["originals"], 3), gflop,
                                           round(rate, 2), gflop / rate)
    return result


def _zip(models: Models, data: Data, opts: ZipOptions) -> ZipResult:
    """:func:`zip_models` after the options are merged; phases timed (:mod:`onnxzip.timing`)."""
    start = time.perf_counter()
    tasks = prepare(models, data, opts)
    memory = memory_by_design(tasks.irs, opts, samples_of(tasks.arrays))  # (refuses what cannot fit, now)
    if not opts.quiet:
        print(f"onnxzip: {memory.line()}", file=sys.stderr, flush=True)
    if opts.target_params is not None or opts.max_loss_increase is not None:
        result = zip_within_budget(tasks, opts)  # (distilled at every try)
    else:
        result = zip_once(tasks, opts, opts.share)
        if opts.distill:
            distil(result, tasks, opts)
    if opts.finetune:
        retrain(result, tasks, opts)
    report = result.summary
    report.memory = memory
    warn_fidelity(report, opts)
    sizes = report.sizes
    report.deployment_problems = deployment_problems(
        result.model, {k: set(v) for k, v in sizes.open.items()} if sizes is not None and sizes.ok else None)
    provenance(report, models, data, tasks, opts)
    report.options["shared_input"] = tasks.shared_inputs
    report.cost_units = "loss" if result.plan.loss_aware else "pre-activation"
    stamp(result.model, {name: ir.weights_sha256 for name, ir in zip(tasks.names, tasks.irs)})
    report.model_inputs = {k: [d if d is not None else "?" for d in dims]
                           for k, dims in io.declared_dims(result.model).items()}
    report.seconds = round(time.perf_counter() - start, 3)
    return result


def retrain(result: ZipResult, tasks: Tasks, opts: ZipOptions) -> None:
    """``--finetune``: light retraining with the tasks' labels; the report measures fidelity again
    and keeps the equivalence check and the budget of the zip it started from."""
    tuned = time.perf_counter()
    train = [{**a, "label": y} for a, y in zip(tasks.arrays, tasks.labels)]
    with timing.phase("finetune"):
        result.model = finetune_model(result.model, train, "label", opts.finetune, device=opts.device,
                                      quiet=opts.quiet)
    before = measure_again(result, tasks, opts)
    result.summary.finetune = FinetuneRecord(opts.finetune, round(time.perf_counter() - tuned, 3), before.tasks)


def provenance(report: ZipReport, models: Sequence[Any], data: Sequence[Any], tasks: Tasks,
               opts: ZipOptions) -> None:
    """What reproduces a zip, into ``report``: onnxzip's version, every input's SHA-256 and every
    option (a budget's zip shares what the budget chose: ``share`` is then None and the report's
    ``budget.counts`` says)."""
    report.options = opts.as_report()
    if report.budget is not None:
        report.options["share"] = None
    report.inputs = [InputRecord(n, str(m) if isinstance(m, (str, os.PathLike)) else None, io.sha256(m),
                                 str(d) if isinstance(d, (str, os.PathLike)) else None,
                                 images.folder_sha256(d, opts.recipe()) if images.is_image_folder(d) else io.sha256(d))
                     for n, m, d in zip(tasks.names, models, list(data) * len(models) if len(data) == 1 else data)]
    # (one data file for every task: each task's record names it)
    report.onnxzip_version = __version__
    held = [len(next(iter(h.values()))) if h else 0 for h in tasks.held]
    report.metrics_on = (f"held-out calibration samples ({', '.join(map(str, held))} per task, seeded; the zip was "
                         "fitted to the rest)" if tasks.held_out else
                         "the calibration samples the zip was fitted to ("
                         + ("--hold-out 0" if not opts.hold_out else "too few to hold any out") + ": no verdict)")


def distill_model(model: onnx.ModelProto, originals: Models, data: Data, opts: ZipOptions
                  ) -> tuple[onnx.ModelProto, DistillRecord, list[TaskRow]]:
    """Distil an existing zipped model from its originals (``onnxzip distill``): ``opts.distill``
    steps at most, on ``data`` (per original, or one for all), ``opts.hold_out`` of it held out.

    Returns:
        the tuned model, what was done (with each task's fidelity before), each task's fidelity after.
    """
    names = zipped_tasks(model)
    if len(originals) != len(names):
        raise UsageError(f"give one original per task of the zipped model: {len(names)} tasks ({', '.join(names)}), "
                         f"{len(originals)} originals")
    if opts.distill < 1:
        raise UsageError(f"--steps {opts.distill}: give a number of steps >= 1")
    tasks = prepare(originals, data, replace(opts, names=tuple(names)))
    check_originals(model, names, [ir.weights_sha256 for ir in tasks.irs], [ir.source for ir in tasks.irs])
    outputs = {o.name for o in model.graph.output}
    for t, ir in enumerate(tasks.irs):
        missing = [o for o in ir.outputs if f"{names[t]}/{o}" not in outputs]
        if missing:
            raise UsageError(f"{ir.source}: the zipped model has no output {names[t]}/{missing[0]!r}; give the "
                             "originals in the zipped model's task order")
    result = ZipResult(model, None, names, None)
    data, refs = (tasks.held, tasks.held_references) if tasks.held_out else (tasks.arrays, tasks.references)
    before = task_rows(result, tasks.irs, run_tasks(result, tasks.irs, data, opts), refs, opts, tasks.held_out)
    result.model, log = distill(model, tasks, opts, lambda it, desc: progress(it, desc, opts.quiet))
    after = task_rows(result, tasks.irs, run_tasks(result, tasks.irs, data, opts), refs, opts, tasks.held_out)
    return result.model, DistillRecord(opts.distill, log.steps_run, log.best_step, rounded(log.held_before),
                                       rounded(log.held_after), log.seconds, before), after


def zipped_tasks(model: onnx.ModelProto, source: str = "the model") -> list[str]:
    """The task names of a zipped model, in its order (from its outputs ``<task>/<name>``)."""
    tasks = list(dict.fromkeys(o.name.split("/")[0] for o in model.graph.output if "/" in o.name))
    if not tasks:
        raise UsageError(f"{source}: no outputs <task>/<name>, so not a zipped model (give the one onnxzip zip wrote)")
    return tasks


def finetune_model(model: onnx.ModelProto, data: Sequence[str | os.PathLike | dict[str, np.ndarray]],
                   labels: str = "label", steps: int = 200, lr: float = 1e-3, batch: int = 32, device: str = "cpu",
                   quiet: bool = False) -> onnx.ModelProto:
    """Retrain a zipped model lightly on labelled data (one set per task, in the model's task order).

    Each ``data`` item holds the task's inputs (by their original names) and integer class labels
    under ``labels``; each task is trained on its first output with two or more classes.
    """
    from .tune.labels import finetune
    if steps < 1:
        raise UsageError(f"--finetune {steps}: give a number of steps >= 1")
    if not (np.isfinite(lr) and lr > 0):
        raise UsageError(f"--lr {lr}: give a positive learning rate")
    if batch < 1:
        raise UsageError(f"--batch-size {batch}: must be >= 1")
    tasks = zipped_tasks(model)
    if len(data) != len(tasks):
        raise UsageError(f"give one labelled data file per task: {len(tasks)} tasks ({', '.join(tasks)}), "
                         f"{len(data)} files")
    types = {o.name: o.type.tensor_type for o in model.graph.output}
    feeds, ys, outs = [], [], []
    for task, d in zip(tasks, data):
        arrays = io.load_arrays(d) if isinstance(d, (str, os.PathLike)) else dict(d)
        source = str(d) if isinstance(d, (str, os.PathLike)) else task
        if labels not in arrays:
            raise InputError(f"{source}: no labels key {labels!r}")
        out = next((o for o, tt in types.items() if o.startswith(f"{task}/") and len(tt.shape.dim) == 2
                    and tt.shape.dim[1].dim_value > 1), None)
        if out is None:
            raise UsageError(f"task {task!r} has no classifier output (N, classes) to train")
        ys.append(io.check_labels(arrays.pop(labels), types[out].shape.dim[1].dim_value, source))
        feeds.append(_task_feeds(model, arrays, out, source))  # (checked: shapes, dtypes, NaN)
        outs.append(out)
    return finetune(model, tasks, feeds, ys, outs, steps=steps, lr=lr, batch=batch, device=device,
                    progress=lambda it, desc, uneven=False: progress(it, desc, quiet, uneven))


def accuracy_of(model: onnx.ModelProto | str | os.PathLike, data: dict[str, np.ndarray], labels: np.ndarray,
                output: str, device: str = "cpu", threshold: float = 0.5, source: str = "data") -> float:
    """Top-1 accuracy of one output of a model on labelled data.

    ``data`` holds the inputs of the output's task, by the model's input names or, in a zipped
    model, by the original names (``image`` for ``digit/image``); other tasks' inputs get zeros.
    Class scores (N, C) count by argmax, a single score per sample (a detector, (N,) or (N, 1))
    is class 1 above ``threshold``, and an integer output is taken as the predicted labels.
    ``source`` names the data in error messages.
    """
    proto = io.load_model(model) if isinstance(model, (str, os.PathLike)) else model
    outputs = {o.name: o for o in proto.graph.output}
    if output not in outputs:
        raise UsageError(f"{model if isinstance(model, (str, os.PathLike)) else 'the model'} has no output {output!r} "
                         f"(outputs: {', '.join(outputs)})")
    if not outputs[output].type.HasField("tensor_type"):
        raise UsageError(f"output {output!r} is not a tensor (a sequence or map): give a tensor output of scores "
                         "or labels")
    feeds = _task_feeds(proto, data, output, source)
    n = next(iter(feeds.values())).shape[0]
    labels = io.check_labels(labels, None, source, n)
    sess = runtime.session(proto, device)
    pred = np.asarray(runtime.run(sess, zipped_feeds(sess, feeds), [output])[output])
    if pred.dtype.kind == "f" and not np.isfinite(pred).all():
        raise InputError(f"{model if isinstance(model, (str, os.PathLike)) else 'the model'}: output {output!r} holds "
                         f"NaN or Inf on {source} ({int(np.sum(~np.isfinite(pred)))} of {pred.size} values): no accuracy")
    if pred.ndim == 2 and pred.shape[1] > 1:
        labels = io.check_labels(labels, pred.shape[1], source)
        return float(np.mean(pred.argmax(axis=1) == labels))
    if pred.ndim not in (1, 2) or len(pred) != n:
        raise UsageError(f"output {output!r} has shape {pred.shape}: accuracy needs one score, one label or class "
                         f"scores per sample, (N,) or (N, C), N = {n}")
    pred = pred.reshape(n)
    if pred.dtype.kind in "iub":
        return float(np.mean(pred == labels))
    labels = io.check_labels(labels, 2, source)  # (one score: two classes)
    return float(np.mean((pred > threshold) == labels))


def _task_feeds(model: onnx.ModelProto, data: dict[str, np.ndarray], output: str, source: str
                ) -> dict[str, np.ndarray]:
    """The data checked against the inputs that ``output``'s task reads, keyed by the model's names."""
    task = output.split("/")[0]
    tasks = {o.name.split("/")[0] for o in model.graph.output if "/" in o.name}
    others = tasks - {task}
    own = [s for s in io.input_specs(model) if s.name.split("/")[0] not in others or "/" not in s.name]
    names = {s.name for s in own}
    keyed = {}
    for key, value in data.items():
        name = key if key in names else f"{task}/{key}"
        if name not in names:
            where = f"task {task!r}" if task in tasks else "the model"
            raise InputError(f"{source}: key {key!r} is not an input of {where} (inputs: {', '.join(sorted(names))})")
        keyed[name] = value
    return io.check_calibration(keyed, own, source)


__all__ = ["InputError", "ZipOptions", "ZipResult", "accuracy_of", "finetune_model", "zip_models"]
