"""The public pipeline: load -> normalize -> align -> calibrate/zip -> emit -> verify/report."""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import __version__, images, timing
from .calibrate import runtime
from .calibrate.fisher import loss_statistics
from .check.layers import measure_layers
from .check.verify import reference_outputs, verify, warn_fidelity, zipped_feeds
from .emit.model import emit_model
from .errors import InputError, UsageError
from .graph import io
from .graph.align import align
from .graph.ir import ModelIR, build_ir
from .graph.lint import MAX_OPSET, deployment_problems
from .graph.normalize import onnx_opset
from .images import ImageRecipe
from .options import ZipOptions
from .report.records import BudgetRecord, BudgetTry, FinetuneRecord, InputRecord, ZipReport
from .sharing.budget import BudgetPlanner
from .sharing.loop import zip_tasks
from .sharing.plan import Budget, ZipPlan

log = logging.getLogger(__name__)
MAX_BACKOFF = 3  # a budget's zip is loosened at most this many times when it measures worse than predicted


@dataclass
class ZipResult:
    """The zipped model, its report (typed: ``summary``; as JSON: ``report``), and the task names
    (outputs ``<task>/<name>``)."""

    model: onnx.ModelProto
    summary: ZipReport | None
    names: list[str]
    plan: ZipPlan = field(repr=False)

    @property
    def report(self) -> dict[str, Any]:
        """The report as JSON-ready values (the keys the README's ``--report`` lists)."""
        return self.summary.to_dict()

    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically."""
        io.save_model(self.model, path)

    def inputs_for(self, task: int, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Map a task's input arrays (by original name) to the zipped model's input names."""
        names = {i.name for i in self.model.graph.input}
        return {(k if k in names else f"{self.names[task]}/{k}"): v for k, v in data.items()
                if k in names or f"{self.names[task]}/{k}" in names}


#: without a terminal, a progress line at most this often (seconds)
PROGRESS_EVERY = 5.0


def progress(items: Iterable, desc: str, quiet: bool) -> Iterable:
    """Progress on stderr unless ``quiet``: a bar on a terminal, else a line every few seconds
    (``desc i/n, elapsed, ETA``), so that a slow run can be told from a hung one in a log."""
    if quiet:
        return items
    if sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(items, desc=desc, leave=False)
    return _progress_lines(list(items), desc)


def _progress_lines(items: list, desc: str) -> Iterable:
    start = last = time.perf_counter()
    for i, item in enumerate(items):
        now = time.perf_counter()
        if i and now - last >= PROGRESS_EVERY:
            eta = (now - start) / i * (len(items) - i)
            print(f"onnxzip: {desc} {i}/{len(items)}, {now - start:.0f} s, about {eta:.0f} s to go", file=sys.stderr,
                  flush=True)
            last = now
        yield item


def task_names(models: Sequence[Any], given: Sequence[str] | None) -> list[str]:
    if given:
        return list(given)
    names = []
    for i, m in enumerate(models):
        stem = re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(m).stem) if isinstance(m, (str, os.PathLike)) else f"task{i}"
        names.append(stem if stem not in names else f"{stem}_{i}")
    return names


def load_tasks(models: Sequence[str | os.PathLike | onnx.ModelProto], names: list[str],
               data: Sequence[str | os.PathLike | dict[str, np.ndarray]] | None = None,
               extra_keys: tuple[str, ...] = (), recipe: ImageRecipe | None = None
               ) -> tuple[list[onnx.ModelProto], list[ModelIR], list[dict[str, np.ndarray]]]:
    """Load the models and their calibration data, and normalize the models (not yet aligned),
    all converted to one opset. Dynamic float input dims other than the batch are fixed to the
    calibration data's sizes (:func:`io.fix_dynamic_dims`). A folder in ``data`` is read as images
    with ``recipe`` (:mod:`onnxzip.images`)."""
    protos = [io.load_model(m) if isinstance(m, (str, os.PathLike)) else m for m in models]
    sources = [str(m) if isinstance(m, (str, os.PathLike)) else n for m, n in zip(models, names)]
    arrays = []
    for i, d in enumerate(data or []):
        specs = io.input_specs(protos[i])
        if images.is_image_folder(d):
            if extra_keys:
                raise UsageError(f"{d}: an image folder has no labels (--labels needs .npz files)")
            arrays.append(io.check_calibration(images.load_folder(d, specs, recipe or ImageRecipe()), specs, str(d)))
        elif isinstance(d, (str, os.PathLike)):
            arrays.append(io.load_calibration(d, specs, extra_keys))
        else:
            arrays.append(io.check_calibration(dict(d), specs, f"calibration data of task {names[i]!r}", extra_keys))
        protos[i] = io.fix_dynamic_dims(protos[i], arrays[-1])
    opset = min(max(onnx_opset(p) for p in protos), MAX_OPSET)
    return protos, [build_ir(p, n, s, opset) for p, n, s in zip(protos, names, sources)], arrays


def zip_models(models: Sequence[str | os.PathLike | onnx.ModelProto],
               data: Sequence[str | os.PathLike | dict[str, np.ndarray]],
               options: ZipOptions | None = None, **overrides: Any) -> ZipResult:
    """Zip same-architecture models into one multi-task model.

    Args:
        models: ONNX files or ModelProtos (not modified).
        data: per model, calibration arrays (a ``.npz``/``.npy`` path or a dict input name -> (N, ...)).
        options: a :class:`ZipOptions`; keyword overrides (e.g. ``share=0.5``) replace its fields.
    """
    opts = replace(options or ZipOptions(), **overrides)
    with timing.record() as phases:
        result = _zip(models, data, opts)
    result.summary.phases = {k: round(v, 3) for k, v in phases.items()}
    result.summary.peak_rss_mb = round(timing.peak_rss_mb(), 1)
    return result


def _zip(models: Sequence[str | os.PathLike | onnx.ModelProto],
         data: Sequence[str | os.PathLike | dict[str, np.ndarray]], opts: ZipOptions) -> ZipResult:
    """:func:`zip_models` after the options are merged; phases timed (:mod:`onnxzip.timing`)."""
    if len(models) < 2:
        raise UsageError("give at least two models")
    if len(data) == 1:  # one for all
        data = list(data) * len(models)
    if len(data) != len(models):
        raise UsageError(f"give one calibration file per model, or one for all: {len(models)} models, "
                         f"{len(data)} data files")
    opts.check(len(models))
    start = time.perf_counter()
    names = task_names(models, opts.names)
    with timing.phase("load"):
        protos, irs, arrays = load_tasks(models, names, data, (opts.labels,) if opts.labels else (), opts.recipe())
    labels = [a.pop(opts.labels, None) if opts.labels else None for a in arrays]
    for t, ir in enumerate(irs):
        arrays[t], labels[t] = whole_batches(ir, arrays[t], labels[t])
    if opts.finetune and any(y is None for y in labels):
        raise UsageError("--finetune needs labels: give --labels KEY, the key of the labels in every --data file")
    with timing.phase("load"):
        irs = align(irs)
    if opts.cost == "correlation":  # correlations need the same samples through every task
        if any(set(a) != set(arrays[0]) or any(a[k].shape[1:] != arrays[0][k].shape[1:] for k in a) for a in arrays):
            raise UsageError("--cost correlation needs tasks with the same inputs")
        common = {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}
        arrays = [common] * len(arrays)
    shared_inputs = not opts.separate_inputs and _same_inputs(irs)
    with timing.phase("originals"):
        references = reference_outputs(protos, irs, arrays, opts)  # once, however many zips a budget takes
    del protos  # (the normalized graphs hold the weights from here on)

    def zip_once(share, fisher=None, loss_aware: bool = opts.loss_aware) -> ZipResult:
        plan = zip_tasks(irs, arrays, share, replace(opts, loss_aware=loss_aware), labels=labels, fisher=fisher,
                         outputs=references, progress=lambda it, desc: progress(it, desc, opts.quiet))
        with timing.phase("emit"):
            model = emit_model(irs, plan, names, shared_inputs, opts.favor)
            if io.is_large(model):
                with io.on_disk(model) as path:
                    onnx.checker.check_model(path, full_check=True)
            else:
                onnx.checker.check_model(model, full_check=True)
        result = ZipResult(model, None, names, plan)
        with timing.phase("verify"):
            result.summary = verify(result, irs, arrays, opts, references)
        with timing.phase("layer check"):
            errors = measure_layers(plan, irs, names)
        for row, err in zip(result.summary.layers, errors):
            row.error = err
        return result

    if opts.target_params is not None or opts.max_loss_increase is not None:
        result = zip_within_budget(irs, arrays, labels, opts, zip_once, references)
    else:
        result = zip_once(opts.share)
    if opts.finetune:
        tuned = time.perf_counter()
        train = [{**a, "label": y} for a, y in zip(arrays, labels)]
        with timing.phase("finetune"):
            result.model = finetune_model(result.model, train, "label", opts.finetune, device=opts.device,
                                          quiet=opts.quiet)
        before = result.summary
        result.summary = verify(result, irs, arrays, opts, references, check=False)  # fine-tuned: fidelity only
        result.summary.equivalence, result.summary.budget = before.equivalence, before.budget
        result.summary.finetune = FinetuneRecord(opts.finetune, round(time.perf_counter() - tuned, 3), before.tasks)
    report = result.summary
    warn_fidelity(report, opts)
    report.deployment_problems = deployment_problems(result.model)
    provenance(report, models, data, names, opts)
    report.options["shared_input"] = shared_inputs
    report.cost_units = "loss" if result.plan.loss_aware else "pre-activation"
    report.seconds = round(time.perf_counter() - start, 3)
    return result


def whole_batches(ir: ModelIR, arrays: dict[str, np.ndarray], labels: np.ndarray | None
                  ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """A model that fixes its batch size B > 1 and holds tensors without the batch on axis 0 (token
    rows, sequence-first layouts) gets whole batches: the calibration samples past the last multiple
    of B are left out (with fewer than B, they are repeated up to B), because its stages cannot pad a
    partial batch. Batch-major models keep every sample (each stage pads its last batch)."""
    fixed = ir.fixed_batch
    n = next(iter(arrays.values())).shape[0]
    if fixed is None or fixed <= 1 or n % fixed == 0:
        return arrays, labels
    if all(t.shape[0] == fixed for t in ir.graph.tensors().values()
           if not isinstance(t, gs.Constant) and t.shape and t.dtype is not None and np.dtype(t.dtype).kind == "f"):
        return arrays, labels
    m = n - n % fixed if n > fixed else fixed
    log.warning("task %r: the model fixes its batch at %d: %s", ir.name, fixed,
                f"{n - m} of its {n} calibration samples are left out" if m < n else f"its {n} samples repeat to {m}")
    return ({k: np.resize(v, (m,) + v.shape[1:]) for k, v in arrays.items()},
            None if labels is None else np.resize(labels, m))


def provenance(report: ZipReport, models: Sequence[Any], data: Sequence[Any], names: list[str],
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
                     for n, m, d in zip(names, models, data)]
    report.onnxzip_version = __version__
    report.metrics_on = "calibration data (the samples the zip was fitted to, not held out)"


def zip_within_budget(irs: list[ModelIR], arrays: list[dict[str, np.ndarray]], labels: list, opts: ZipOptions,
                      zip_once: Callable[..., ZipResult], outputs: list[dict[str, Any]] | None = None) -> ZipResult:
    """Zip under ``--target-params`` / ``--max-loss-increase``, measured, not only predicted.

    The per-group counts come from predicted costs (one pass over the originals). After the zip,
    each task's fidelity and loss increase (:func:`onnxzip.check.fidelity.output_loss`) are measured on the
    calibration data. Where a task is degraded or collapsed (:func:`onnxzip.check.fidelity.verdict`) the
    prediction did not hold: the budget is loosened (half the way to keeping everything; the
    costliest slots per parameter go first) and the zip redone, at most ``MAX_BACKOFF`` times.
    The report's ``budget.backoff`` lists every try with its predicted cost (the costs' units) and
    measured output loss (:func:`onnxzip.check.fidelity.output_loss`: not the same units; for reading).
    """
    fisher = loss_statistics(irs, arrays, labels, opts.device, outputs) if opts.loss_aware else None
    with timing.phase("budget"):
        planner = BudgetPlanner(irs, arrays, fisher, opts)
    budget, tries = Budget(opts.target_params, opts.max_loss_increase), []
    while True:
        counts, predicted = planner.allocate(budget)
        result = zip_once(counts, fisher, loss_aware=fisher is not None)
        report = result.summary
        measured = sum(t.loss_increase or 0.0 for t in report.tasks)
        fits = all((t.verdict or "ok") == "ok" for t in report.tasks)
        verdicts = ", ".join(f"{t.name} {t.verdict}" for t in report.tasks)
        tries.append(BudgetTry(budget.target_params, budget.max_cost, counts, predicted, measured,
                               report.params_after / report.params_before, fits))
        if fits or not any(counts):
            break
        if len(tries) > MAX_BACKOFF:
            log.warning("the budget still measures worse than predicted after %d tries (%s); kept as it is",
                        len(tries), verdicts)
            break
        log.warning("the budget's zip measures worse than its prediction (%s at %.1f%% kept): backing off",
                    verdicts, 100 * tries[-1].params_kept)
        budget = Budget(None if budget.target_params is None else (1 + budget.target_params) / 2,
                        None if budget.max_cost is None else budget.max_cost / 2)
    result.summary.budget = BudgetRecord(counts, predicted, opts.target_params, opts.max_loss_increase, measured,
                                         tries if len(tries) > 1 else [])
    return result


def _same_inputs(irs: list[ModelIR]) -> bool:
    first = [(s.name, s.dtype, s.shape[1:]) for s in irs[0].inputs]
    return all([(s.name, s.dtype, s.shape[1:]) for s in ir.inputs] == first for ir in irs[1:])


def finetune_model(model: onnx.ModelProto, data: Sequence[str | os.PathLike | dict[str, np.ndarray]],
                   labels: str = "label", steps: int = 200, lr: float = 1e-3, batch: int = 32, device: str = "cpu",
                   quiet: bool = False) -> onnx.ModelProto:
    """Retrain a zipped model lightly on labelled data (one set per task, in the model's task order).

    Each ``data`` item holds the task's inputs (by their original names) and integer class labels
    under ``labels``; each task is trained on its first output with two or more classes.
    """
    from .finetune import check_labels, finetune
    if steps < 1:
        raise UsageError(f"--finetune {steps}: give a number of steps >= 1")
    tasks = list(dict.fromkeys(o.name.split("/")[0] for o in model.graph.output if "/" in o.name))
    if len(data) != len(tasks):
        raise UsageError(f"give one labelled data file per task: {len(tasks)} tasks ({', '.join(tasks)}), "
                         f"{len(data)} files")
    names = {i.name for i in model.graph.input}
    types = {o.name: o.type.tensor_type for o in model.graph.output}
    feeds, ys, outs = [], [], []
    for task, d in zip(tasks, data):
        arrays = io.load_arrays(d) if isinstance(d, (str, os.PathLike)) else dict(d)
        if labels not in arrays:
            raise InputError(f"{d if isinstance(d, (str, os.PathLike)) else task}: no labels key {labels!r}")
        out = next((o for o, tt in types.items() if o.startswith(f"{task}/") and len(tt.shape.dim) == 2
                    and tt.shape.dim[1].dim_value > 1), None)
        if out is None:
            raise UsageError(f"task {task!r} has no classifier output (N, classes) to train")
        ys.append(check_labels(arrays.pop(labels), types[out].shape.dim[1].dim_value, str(d)))
        feeds.append({(k if k in names else f"{task}/{k}"): v for k, v in arrays.items()
                      if k in names or f"{task}/{k}" in names})
        outs.append(out)
    return finetune(model, tasks, feeds, ys, outs, steps=steps, lr=lr, batch=batch, device=device,
                    progress=lambda it, desc: progress(it, desc, quiet))


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
    labels = np.asarray(labels)
    n = next(iter(feeds.values())).shape[0]
    if labels.ndim != 1 or len(labels) != n:
        raise InputError(f"{source}: labels have shape {labels.shape}; give one label per sample ({n})")
    sess = runtime.session(proto, device)
    pred = np.asarray(runtime.run(sess, zipped_feeds(sess, feeds), [output])[output])
    if pred.ndim == 2 and pred.shape[1] > 1:
        return float(np.mean(pred.argmax(axis=1) == labels))
    if pred.ndim not in (1, 2) or len(pred) != n:
        raise UsageError(f"output {output!r} has shape {pred.shape}: accuracy needs one score, one label or class "
                         f"scores per sample, (N,) or (N, C), N = {n}")
    pred = pred.reshape(n)
    if pred.dtype.kind in "iub":
        return float(np.mean(pred == labels))
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


__all__ = ["ZipOptions", "ZipResult", "zip_models", "finetune_model", "accuracy_of", "InputError"]
