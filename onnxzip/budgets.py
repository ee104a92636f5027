"""Zips under a budget (``--target-params``, ``--max-loss-increase``): counts from predicted costs,
every try measured on held-out samples, loosened where a task measures worse, and the allocation
measured against uniform sharing at the same target."""
from __future__ import annotations

import logging
from dataclasses import replace

from . import timing
from .calibrate.fisher import loss_statistics
from .check.fidelity import TOO_FEW
from .options import ZipOptions
from .pipeline import distil, zip_once
from .report.records import BudgetRecord, BudgetTry
from .result import ZipResult
from .sharing.budget import BudgetPlanner
from .sharing.loop import Fisher
from .sharing.plan import Budget, Counts
from .tasks import Tasks

log = logging.getLogger(__name__)
MAX_BACKOFF = 3  # a budget's zip is loosened at most this many times when it measures worse than predicted


def zip_within_budget(tasks: Tasks, opts: ZipOptions) -> ZipResult:
    """Zip under ``--target-params`` / ``--max-loss-increase``, measured, not only predicted.

    The per-group counts come from predicted costs (one pass over the originals). After the zip,
    each task's fidelity and loss increase (:func:`onnxzip.check.fidelity.output_loss`) are measured on the
    calibration data. Where a task is degraded or collapsed (:func:`onnxzip.check.fidelity.verdict`) the
    prediction did not hold: the budget is loosened (half the way to keeping everything; the
    costliest slots per parameter go first) and the zip redone, at most ``MAX_BACKOFF`` times.
    The report's ``budget.backoff`` lists every try with its predicted cost (the costs' units) and
    measured output loss (:func:`onnxzip.check.fidelity.output_loss`: not the same units; for reading).
    """
    irs, arrays = tasks.irs, tasks.arrays
    fisher = loss_statistics(irs, arrays, tasks.labels, opts.device, tasks.references) if opts.loss_aware else None
    with timing.phase("budget"):
        planner = BudgetPlanner(irs, arrays, fisher, opts)
    each = replace(opts, loss_aware=fisher is not None)
    budget, tries = Budget(opts.target_params, opts.max_loss_increase), []
    while True:
        counts, predicted = planner.allocate(budget)
        result = zip_once(tasks, each, Counts(counts), fisher)
        if opts.distill:
            distil(result, tasks, opts)  # before judging: loosen only what distillation cannot mend
        report = result.summary
        measured = sum(t.loss_increase or 0.0 for t in report.tasks)
        fits = all(t.verdict in (None, "ok", TOO_FEW) for t in report.tasks)  # (too few: not disproved)
        verdicts = ", ".join(f"{t.name} {t.verdict}" for t in report.tasks)
        tries.append(BudgetTry(budget.target_params, budget.max_cost, counts, predicted, measured,
                               report.params_kept, fits))
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
    if budget.target_params is not None:
        result = against_uniform(result, tasks, each, fisher, planner, budget.target_params, tries[-1])
    return result


def against_uniform(result: ZipResult, tasks: Tasks, opts: ZipOptions, fisher: Fisher | None,
                    planner: BudgetPlanner, target: float, chosen: BudgetTry) -> ZipResult:
    """A budget's allocation is never worse than uniform sharing: zip (and distil) the uniform share
    that reaches the same ``target``, and full sharing where it keeps no more, and keep the one of
    least measured held-out loss among those whose tasks all fit (:func:`_better`) and that keep no
    more parameters than the target or the allocation."""
    record = result.summary.budget
    full = [len(c) for c in planner.costs]
    others = [("uniform", planner.uniform(target))]
    if planner.kept(full) <= target * planner.total:
        others.append(("full sharing", full))
    best = (result, chosen)
    limit = max(target, result.summary.params_kept) + 1e-4  # (predicted counts can land a little over)
    for kind, counts in others:
        if counts == record.counts:
            continue
        other = zip_once(tasks, opts, Counts(counts), fisher)
        if opts.distill:
            distil(other, tasks, opts)
        rows = other.summary.tasks
        row = BudgetTry(target, None, counts, None, sum(t.loss_increase or 0.0 for t in rows),
                        other.summary.params_kept, all(t.verdict in (None, "ok", TOO_FEW) for t in rows), kind)
        record.compared.append(row)
        if row.params_kept <= limit and _better((other, row), best):
            best = (other, row)
    if best[0] is not result:
        log.info("the budget's allocation measured worse than %s at the same target: kept %s (%.1f%% kept)",
                 best[1].kind, best[1].kind, 100 * best[1].params_kept)
        best[0].summary.budget = replace(record, counts=best[1].counts, predicted_cost=None,
                                         measured_loss=best[1].measured_loss, chosen=best[1].kind)
    return best[0]


def _better(a: tuple[ZipResult, BudgetTry], b: tuple[ZipResult, BudgetTry]) -> bool:
    """Whether zip ``a`` beats ``b``: it fits where ``b`` does not, or both fit (or neither) and its
    tasks' held-out losses, each relative to the two zips' mean for that task, sum lower."""
    if a[1].fits != b[1].fits:
        return a[1].fits
    la = [t.loss_increase or 0.0 for t in a[0].summary.tasks]
    lb = [t.loss_increase or 0.0 for t in b[0].summary.tasks]
    return sum(x / max((x + y) / 2, 1e-30) for x, y in zip(la, lb)) < sum(
        y / max((x + y) / 2, 1e-30) for x, y in zip(la, lb))
