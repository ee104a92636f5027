"""Zips under a budget (``--target-params``, ``--max-loss-increase``): counts from predicted costs,
every try measured on held-out samples, loosened where a task measures worse, and the allocation
measured against uniform sharing at the same target."""
from __future__ import annotations

import logging
from dataclasses import replace

from . import timing
from .calibrate.fisher import loss_statistics
from .check.fidelity import NOT_JUDGED, TOO_FEW
from .options import ZipOptions
from .pipeline import distil, zip_once
from .progress import progress
from .report.records import BudgetRecord, BudgetTry, LossScale
from .result import ZipResult
from .sharing.budget import BudgetPlanner, fit_loss_scale
from .sharing.loop import Fisher
from .sharing.plan import Budget, Counts
from .tasks import Tasks

log = logging.getLogger(__name__)
MAX_BACKOFF = 3  # a budget's zip is loosened at most this many times when it measures worse than predicted


def zip_within_budget(tasks: Tasks, opts: ZipOptions) -> ZipResult:
    """Zip under ``--target-params`` / ``--max-loss-increase``, measured, not only predicted.

    The per-group counts come from predicted costs (one pass over the originals). After the zip,
    each task's fidelity and loss increase (:func:`onnxzip.check.fidelity.output_loss`) are measured on the
    held-out samples. A try fits where every task is ok (:func:`onnxzip.check.fidelity.verdict`) and the
    measured loss, summed over tasks, is within ``--max-loss-increase``. Otherwise it is loosened and
    redone: a target halfway to keeping everything; a loss cap through the
    :class:`~onnxzip.report.records.LossScale` fitted on the tries so far (the predicted cost where it
    would measure the cap), never above 0.9 of the last try's prediction. A loss cap is also
    approached from below (:func:`_closer_cap`). At most ``MAX_BACKOFF`` + 1 zips; the one that fits
    and keeps the fewest parameters is kept.

    The report's ``budget`` lists every try, and the loss scale fitted on all the zips measured,
    which puts every predicted cost in measured loss units (``predicted_loss``).
    """
    irs, arrays = tasks.irs, tasks.arrays
    if not tasks.held_out:
        log.warning("the budget judges its zips on the samples they were fitted to (%s): what it measures is "
                    "not tested on unseen data", "--hold-out 0" if not opts.hold_out else "too few to hold any out")
    fisher = loss_statistics(irs, arrays, tasks.labels, opts.device, tasks.references,
                             lambda it, what: progress(it, what, opts.quiet)) if opts.loss_aware else None
    with timing.phase("budget"):
        planner = BudgetPlanner(irs, arrays, fisher, opts)
    each = replace(opts, loss_aware=fisher is not None)
    cap_loss = opts.max_loss_increase
    # the first try reads the costs as loss (second-order estimates, in the loss's units where loss-aware)
    budget, tries, kept, last = Budget(opts.target_params, cap_loss), [], None, None
    while True:
        counts, predicted = planner.allocate(budget)
        if any(t.counts == counts for t in tries):
            break  # (the same zip again: nothing new to measure)
        result, measured, ok, within = _measured(tasks, each, counts, fisher)
        report = result.summary
        tries.append(BudgetTry(budget.target_params, budget.max_cost, counts, predicted, measured,
                               report.params_kept, ok and within))
        last = (result, tries[-1], budget)
        if ok and within and (kept is None or report.params_kept < kept[1].params_kept):
            kept = last
        if len(tries) > MAX_BACKOFF or not any(counts):
            break
        if ok and within:
            closer = _closer_cap(tries, cap_loss) if cap_loss is not None else None
            if closer is None:
                break
            budget = Budget(budget.target_params, closer)  # (well within the cap, and a try over it: share more)
            continue
        why = ", ".join(f"{t.name} {t.verdict}" for t in report.tasks) if not ok else \
            f"measured loss {measured:.3g} > --max-loss-increase {cap_loss:g}"
        log.warning("the budget's zip measures worse than asked (%s at %.1f%% kept): backing off",
                    why, 100 * tries[-1].params_kept)
        budget = Budget(None if budget.target_params is None else (1 + budget.target_params) / 2,
                        None if budget.max_cost is None else _next_cap(tries, cap_loss, within))
    if kept is None:
        log.warning("the budget still measures worse than asked after %d tries; the last is kept", len(tries))
    result, chosen, budget = kept or last
    counts, predicted, measured = chosen.counts, chosen.predicted_cost, chosen.measured_loss
    result.summary.budget = BudgetRecord(counts, predicted, opts.target_params, budget.max_cost, measured,
                                         tries if len(tries) > 1 else [], max_loss_increase=cap_loss)
    if budget.target_params is not None:
        result = against_uniform(result, tasks, each, fisher, planner, budget.target_params, chosen)
    _in_loss_units(result.summary.budget, tries)
    if opts.target_params is not None and result.summary.params_kept > opts.target_params + 0.005:
        predicted = planner.kept(counts) / planner.total
        full = all(k >= len(c) for k, c in zip(counts, planner.costs))
        why = "backed off to keep the verdicts" if len(tries) > 1 else \
            "every group shares all it can; the heads and unshared layers stay" if full else \
            f"the planner predicted {100 * predicted:.1f}% kept for these counts; its count of the parameters each " \
            "shared neuron saves is approximate (embedding tables, biases)"
        log.warning("--target-params %g not reached: this zip keeps %.1f%% of the parameters (%s)", opts.target_params,
                    100 * result.summary.params_kept, why)
    return result


def _measured(tasks: Tasks, opts: ZipOptions, counts: list[int], fisher: Fisher | None
              ) -> tuple[ZipResult, float, bool, bool]:
    """One zip at ``counts``, distilled where asked (before judging: loosen only what distillation
    cannot mend), and its held-out measure: the loss summed over tasks, whether every task is ok (or
    too few to judge: not disproved), and whether the loss is within ``--max-loss-increase``."""
    result = zip_once(tasks, opts, Counts(counts), fisher)
    if opts.distill:
        distil(result, tasks, opts)
    rows = result.summary.tasks
    measured = sum(t.loss_increase or 0.0 for t in rows)
    ok = all(t.verdict in (None, "ok", TOO_FEW, NOT_JUDGED) for t in rows)
    return result, measured, ok, opts.max_loss_increase is None or measured <= opts.max_loss_increase


def _scale_of(tries: list[BudgetTry]) -> LossScale | None:
    """The loss scale fitted on measured tries (:func:`onnxzip.sharing.budget.fit_loss_scale`)."""
    return fit_loss_scale([(t.predicted_cost or 0.0, t.measured_loss) for t in tries])


def _next_cap(tries: list[BudgetTry], cap_loss: float, within: bool) -> float:
    """The planner's next cost cap under ``--max-loss-increase``: where the loss scale fitted on the
    tries so far measures ``cap_loss`` (over it), or half the last prediction (a task not ok within
    the cap); at most 0.9 of the last prediction."""
    last = tries[-1].predicted_cost or 0.0
    scale = _scale_of(tries)
    cap = scale.cost(cap_loss) if scale is not None and not within else last / 2
    return min(cap, 0.9 * last)


def _closer_cap(tries: list[BudgetTry], cap_loss: float) -> float | None:
    """After a try that fits ``--max-loss-increase`` with room (it measures under half the cap), the
    cost cap between it and the cheapest try that measured over the cap, where the loss scale fitted
    on all the tries measures the cap (kept at least 10% inside that interval); None where no try
    measured over the cap or the interval is too narrow."""
    fit = tries[-1]
    over = [t.predicted_cost for t in tries if t.measured_loss > cap_loss and t.predicted_cost]
    if fit.measured_loss > cap_loss / 2 or not over or not fit.predicted_cost:
        return None
    lo, hi = 1.1 * fit.predicted_cost, 0.9 * min(over)
    scale = _scale_of(tries)
    if lo >= hi or scale is None:
        return None
    return float(min(max(scale.cost(cap_loss), lo), hi))


def _in_loss_units(record: BudgetRecord, tries: list[BudgetTry]) -> None:
    """Fit the loss scale on every zip the budget measured and give each prediction in loss units."""
    every = tries + [t for t in record.compared if t not in tries]  # (``record.backoff`` is ``tries`` or [])
    record.loss_scale = _scale_of(every)
    if record.loss_scale is None:
        return
    for t in every:
        if t.predicted_cost is not None:
            t.predicted_loss = record.loss_scale.loss(t.predicted_cost)
    if record.predicted_cost is not None:
        record.predicted_loss = record.loss_scale.loss(record.predicted_cost)


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
        other, measured, ok, within = _measured(tasks, opts, counts, fisher)
        row = BudgetTry(target, None, counts, planner.cost_of(counts), measured, other.summary.params_kept,
                        ok and within, kind)
        record.compared.append(row)
        if row.params_kept <= limit and _better((other, row), best):
            best = (other, row)
    if best[0] is not result:
        log.info("the budget's allocation measured worse than %s at the same target: kept %s (%.1f%% kept)",
                 best[1].kind, best[1].kind, 100 * best[1].params_kept)
        best[0].summary.budget = replace(record, counts=best[1].counts, predicted_cost=best[1].predicted_cost,
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
