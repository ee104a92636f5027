"""One zip and what may follow it: :func:`zip_once` (the layer loop, emit, checks), then
:func:`distil` (``--distill``), measured again (:func:`measure_again`)."""
from __future__ import annotations

import logging

import onnx

from . import timing
from .check.layers import measure_layers
from .check.shapes import check_sizes
from .check.verify import verify
from .emit.model import emit_model
from .emit.shapes import keep_dynamic, sized_again
from .graph import io
from .options import ZipOptions
from .progress import progress
from .report.records import DistillRecord, ZipReport
from .result import ZipResult
from .sharing.loop import Fisher, zip_tasks
from .tasks import Tasks
from .tune.distill import distill

log = logging.getLogger(__name__)


def zip_once(tasks: Tasks, opts: ZipOptions, share, fisher: Fisher | None = None) -> ZipResult:
    """One zip at ``share`` (fractions, or counts per group from a budget), emitted and checked.
    ``fisher``: the loss weights when a budget computed them already."""
    irs, arrays, names = tasks.irs, tasks.arrays, tasks.names
    plan = zip_tasks(irs, arrays, share, opts, labels=tasks.labels, fisher=fisher, outputs=tasks.references,
                     progress=lambda it, desc, uneven=False: progress(it, desc, opts.quiet, uneven))
    with timing.phase("emit"):
        model = emit_model(irs, plan, names, tasks.shared_inputs, opts.favor)
        if io.weight_bytes(model) > io.SKELETON_BYTES:  # (from a file: checking a proto serializes and
            with io.on_disk(model) as path:               # parses it whole, +2.2 GB for the BERT-base pair)
                onnx.checker.check_model(path, full_check=True)
        else:
            onnx.checker.check_model(model, full_check=True)
        model, dims, sizes_before = keep_dynamic(model, irs, names)  # (the sizes the originals leave open)
    result = ZipResult(model, None, names, plan)
    del model
    timing.release_memory(collect=True)  # (the layer loop's sessions and batches, emit's copies)
    with timing.phase("verify"):
        result.summary = verify(result, irs, arrays, opts, tasks.references, held=(tasks.held, tasks.held_references))
        if dims:
            sizes = check_sizes(result.model, dims, irs, names, tasks.protos, arrays, opts.device)
            if not sizes.ok:
                log.warning("the zipped model keeps the calibration data's input sizes: %s", sizes.note)
                result.model = sized_again(result.model, sizes_before)
            result.summary.sizes = sizes
    with timing.phase("layer check"):
        errors = measure_layers(plan, irs, names)
    for row, err in zip(result.summary.layers, errors):
        row.error = err
    return result


def distil(result: ZipResult, tasks: Tasks, opts: ZipOptions) -> None:
    """``--distill``: tune the zipped model to reproduce the originals (no labels); the report
    measures fidelity again and keeps the zip's equivalence check, layer rows and budget."""
    with timing.phase("distill"):
        result.model, log = distill(result.model, tasks, opts, lambda it, desc: progress(it, desc, opts.quiet))
    before = measure_again(result, tasks, opts)
    result.summary.distill = DistillRecord(opts.distill, log.steps_run, log.best_step, rounded(log.held_before),
                                           rounded(log.held_after), log.seconds, before.tasks)


def measure_again(result: ZipResult, tasks: Tasks, opts: ZipOptions) -> ZipReport:
    """After tuning: each task's fidelity measured again (held out), the rest of the report kept
    from the zip it started from; returns that report."""
    before = result.summary
    result.summary = verify(result, tasks.irs, tasks.arrays, opts, tasks.references, check=False,
                            held=(tasks.held, tasks.held_references))  # fidelity only
    result.summary.equivalence, result.summary.budget, result.summary.sizes = before.equivalence, before.budget, \
        before.sizes
    result.summary.layers, result.summary.finetune, result.summary.distill = before.layers, before.finetune, \
        before.distill
    return before


def rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 6)
