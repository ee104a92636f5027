"""The terminal summary of a zip report."""
from __future__ import annotations

from ..graph.lint import MAX_OPSET
from .records import LOSS_UNITS, DistillRecord, LayerRow, SizesRecord, TaskRow, ZipReport, not_shared_lines, shape_text


def format_table(report: ZipReport) -> str:
    """A plain-text summary of a zip report."""
    return "\n".join(_layers(report) + [""] + _tasks(report) + [""] + _sizes_and_budget(report) + _structure(report)
                     + _checks(report))


def _layers(report: ZipReport) -> list[str]:
    width = max([28] + [len(row.name) for row in report.layers])
    lines = [f"{'layer':<{width}} {'neurons':>8} {'shared':>8} {'cost':>12} {'predicted':>10} {'measured':>10}"]
    for row in report.layers:
        pred, meas = layer_errors(row)
        cells = ["-" if x is None else f"{x:.3g}" for x in (pred, meas)]
        lines.append(f"{row.name:<{width}} {row.neurons:>8} {row.shared:>8} {row.cost:>12.4g} "
                     f"{cells[0]:>10} {cells[1]:>10}")
    if any(row.error is not None for row in report.layers):
        lines.append("predicted / measured: pre-activation error relative to the signal, summed over tasks; predicted "
                     "by the merge, measured in ONNX Runtime (with what earlier layers passed on)")
    return lines


def distill_lines(record: DistillRecord, after: list[TaskRow]) -> list[str]:
    """What distillation did: steps, the held-out loss, and each task's decision metric before -> after."""
    loss = ("" if record.held_loss_before is None else
            f"; held-out distillation loss {record.held_loss_before:.4g} -> {record.held_loss_after:.4g}")
    lines = [f"distilled from the originals: {record.steps_run} of {record.steps} steps, the values of step "
             f"{record.best_step} kept{loss} ({record.seconds:.1f} s)"]
    for b, a in zip(record.tasks_before, after):
        key = next((k for k in ("top1_agreement", "mask_iou") if getattr(a, k) is not None), "rel_err")
        was, now = getattr(b, key), getattr(a, key)
        if was is not None and now is not None:
            lines.append(f"  {a.name}: {key} {was:.4g} -> {now:.4g} ({b.verdict} -> {a.verdict})")
    return lines


def _tasks(report: ZipReport) -> list[str]:
    held = all(t.held_out for t in report.tasks)
    why = "--hold-out 0" if (report.options or {}).get("hold_out") == 0 else "too few to hold any out"
    lines = ["each task against its original, on " + ("held-out calibration samples:" if held else
             f"the samples the zip was fitted to ({why}):"),
             f"{'task':<24} {'rel_err':>10} {'top1_agree':>11} {'mask_iou':>9} {'max_abs_diff':>13}  verdict"]
    for t in report.tasks:
        cells = [("-" if v is None else f"{v:.4g}") for v in (t.rel_err, t.top1_agreement, t.mask_iou, t.max_abs_diff)]
        lines.append(f"{t.name[:24]:<24} {cells[0]:>10} {cells[1]:>11} {cells[2]:>9} {cells[3]:>13}  "
                     f"{t.verdict or '-'}")
    if report.distill is not None:
        lines += distill_lines(report.distill, report.tasks)
    return lines


def _sizes_and_budget(report: ZipReport) -> list[str]:
    pb, pa, bb, ba = report.params_before, report.params_after, report.bytes_before, report.bytes_after
    lines = [f"parameters {pb:,} -> {pa:,} ({pa / pb:.1%});  weight bytes {_mb(bb)} -> {_mb(ba)}"]
    budget = report.budget
    if budget:
        cap = budget.max_cost if budget.max_loss_increase is None else budget.max_loss_increase  # (older reports)
        asked = " ".join(([f"--target-params {budget.target_params}"] if budget.target_params is not None else [])
                         + ([f"--max-loss-increase {cap}"] if budget.max_loss_increase is not None
                            or budget.target_params is None else []))
        line = (f"budget {asked}: shared per group {budget.counts}; measured output loss increase "
                f"{budget.measured_loss:.3g} per sample (summed over tasks; {LOSS_UNITS})")
        if budget.backoff:
            kept = ", ".join(f"{t.params_kept:.1%}" for t in budget.backoff)
            line += f"; {len(budget.backoff)} zips measured, loosened where tasks measured worse than asked ({kept} kept)"
        lines.append(line)
        if budget.compared:
            lines.append("measured against, at the same target: " + ", ".join(
                f"{t.kind} ({t.params_kept:.1%} kept, loss {t.measured_loss:.3g}{'' if t.fits else ', does not fit'})"
                for t in budget.compared) + f"; kept: {budget.chosen}")
        if budget.loss_scale is not None:
            ls = budget.loss_scale
            lines.append(f"predicted cost {budget.predicted_cost or 0:.3g} ({report.cost_units or 'pre-activation'} "
                         f"units) -> predicted loss {budget.predicted_loss or 0:.3g}, through loss = {ls.scale:.3g} "
                         f"x cost^{ls.power:.2f} fitted on {ls.zips} measured zip(s)")
    return lines


def _structure(report: ZipReport) -> list[str]:
    lines, orders = [], {}
    for g in report.groups:
        if len(g.layers) > 1:
            lines.append(f"tied group (one matching): {', '.join(g.layers)}")
        if g.choice is not None and len(g.choice.order) > 2:
            key = " -> ".join(g.choice.order)
            orders[key] = orders.get(key, 0) + 1
    if orders:
        lines.append("task order chosen (groups): " + "; ".join(f"{k} ({v})" for k, v in orders.items()))
    methods: dict[str, list[float]] = {}
    for g in report.groups:
        if g.choice is not None and g.choice.shared and g.choice.matching:
            methods.setdefault(g.choice.matching, []).append(g.choice.matching_seconds)
    if any("sparse" in m for m in methods):  # (the dense assignment is the method's default)
        lines.append("matched by: " + "; ".join(f"{m} ({len(s)} group{'s' * (len(s) > 1)}, {sum(s):.1f} s)"
                                                 for m, s in methods.items()))
    if report.samples:
        lines.append("calibration samples per task: " + ", ".join(
            f"{t.name} {n}" for t, n in zip(report.tasks, report.samples)))
    line = rows_line(report)
    if line:
        lines.append(line)
    if report.restored_at:
        lines.append(f"channel order restored before: {', '.join(report.restored_at)}")
    if report.attention:
        lines.append(f"attention blocks ({len(report.attention)}; tied heads run on the zipped Q, K and V, whole "
                     f"heads shared; restored ones on each task's own order): " + "; ".join(report.attention))
    return lines


def rows_line(report: ZipReport) -> str | None:
    """How many rows (samples x positions or tokens) the layers' statistics read, and how many
    layers read a seeded subset of theirs (``--stat-rows``)."""
    counted = [r for r in report.layers if r.stat_rows]
    if not counted:
        return None
    cut = [r for r in counted if r.rows_read < 1.0]
    most = (report.options or {}).get("stat_rows")
    line = (f"rows per layer statistic: {min(r.stat_rows for r in counted):,} to {max(r.stat_rows for r in counted):,}")
    if cut:
        low = min(cut, key=lambda r: r.rows_read)
        line += (f"; {len(cut)} layer(s) read a seeded subset (--stat-rows {most}), the least {low.rows_read:.1%} "
                 f"of its rows ({low.name})")
    return line


def sizes_lines(sizes: SizesRecord, batch: int) -> list[str]:
    """The input sizes the zipped model takes, and the TensorRT profile its checks cover."""
    if not sizes.ok:
        return [f"input sizes: fixed to the calibration data's ({sizes.note})"]
    opened = "; ".join(f"{k} axes {', '.join(f'{a} ({n})' for a, n in v.items())}" for k, v in sizes.open.items())
    errs = ", ".join("-" if e is None else f"{e:.3g}" for e in sizes.rel_err)
    profile = "; ".join(f"{k} min {p['min']} opt {p['opt']} max {p['max']}" for k, p in sizes.profile(batch).items())
    return [f"input sizes: open as in the originals ({opened}); run at {sizes.checked} beside the originals: "
            f"relative error per task {errs}",
            f"TensorRT optimization profile the checks cover: {profile}"]


def _checks(report: ZipReport) -> list[str]:
    eq = report.equivalence
    lines = [f"equivalence check (zipped model vs. per-task zipped networks): max abs diff {eq.max_abs_diff:.3g} "
             f"(tolerance {eq.tolerance:.3g}, the models' own float noise {eq.float_noise:.3g})  [{eq.verdict}]"]
    lines += [f"not shared: {line}" for line in not_shared_lines(report.not_shared)]
    if report.model_inputs:
        lines.append("the zipped model's inputs: " + ", ".join(f"{k} {shape_text(v)}" for k, v in report.model_inputs.items()))
    if report.deployment_problems is not None:
        problems = report.deployment_problems
        lines.append(f"TensorRT-ready (opset <= {MAX_OPSET}, batch the only dynamic dim, constants folded, standard ops, weights "
                     "as initializers): " + ("yes" if not problems else
                                             f"no, {len(problems)} problem(s); first: {problems[0]}"))
    if report.sizes is not None:
        lines += sizes_lines(report.sizes, int((report.options or {}).get("batch_size", 64)))
    if report.phases:
        lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report.phases.items())
                     + f"; peak memory {report.peak_rss_mb or 0:.0f} MB"
                     + (f" (reached in {report.peak_phase})" if report.peak_phase else ""))
    if report.floor is not None:
        lines.extend(report.floor.lines())
    if report.memory is not None:
        lines.append(report.memory.line(report.peak_rss_mb, report.peak_phase))
    return lines


def layer_errors(row: LayerRow) -> tuple[float | None, float | None]:
    """A report layer's predicted and measured pre-activation error, summed over tasks, relative to
    the summed signal (None where not known)."""
    err = row.error
    if not err:
        return None, None
    signal = max(sum(err.signal), 1e-300)
    pred = None if err.predicted is None else sum(err.predicted) / signal
    return pred, sum(err.measured) / signal


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
