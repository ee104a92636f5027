"""The terminal summary of a zip report."""
from __future__ import annotations

from typing import Any


def format_table(report: dict[str, Any]) -> str:
    """A plain-text summary of a zip report."""
    width = max([28] + [len(row["name"]) for row in report["layers"]])
    lines = [f"{'layer':<{width}} {'neurons':>8} {'shared':>8} {'cost':>12} {'predicted':>10} {'measured':>10}"]
    for row in report["layers"]:
        pred, meas = layer_errors(row)
        cells = ["-" if x is None else f"{x:.3g}" for x in (pred, meas)]
        lines.append(f"{row['name']:<{width}} {row['neurons']:>8} {row['shared']:>8} {row['cost']:>12.4g} "
                     f"{cells[0]:>10} {cells[1]:>10}")
    if any("error" in row for row in report["layers"]):
        lines.append("predicted / measured: pre-activation error relative to the signal, summed over tasks; predicted "
                     "by the merge, measured in ONNX Runtime (with what earlier layers passed on)")
    lines.append("")
    lines.append("each task against its original, on the calibration data:")
    lines.append(f"{'task':<24} {'rel_err':>10} {'top1_agree':>11} {'mask_iou':>9} "
                 f"{'max_abs_diff':>13}  verdict")
    for t in report["tasks"]:
        cells = [("-" if t.get(k) is None else f"{t[k]:.4g}")
                 for k in ("rel_err", "top1_agreement", "mask_iou", "max_abs_diff")]
        lines.append(f"{t['name'][:24]:<24} {cells[0]:>10} {cells[1]:>11} {cells[2]:>9} {cells[3]:>13}  "
                     f"{t.get('verdict', '-')}")
    lines.append("")
    pb, pa, bb, ba = (report[k] for k in ("params_before", "params_after", "bytes_before", "bytes_after"))
    lines.append(f"parameters {pb:,} -> {pa:,} ({pa / pb:.1%});  weight bytes {_mb(bb)} -> {_mb(ba)}")
    budget = report.get("budget")
    if budget:
        asked = (f"--target-params {budget['target_params']}" if budget.get("target_params") is not None
                 else f"--max-loss-increase {budget.get('max_cost')}")
        line = (f"budget {asked}: shared per group {budget['counts']}; measured output loss increase "
                f"{budget.get('measured_loss', 0):.3g} per sample (summed over tasks)")
        if budget.get("backoff"):
            kept = ", ".join(f"{t['params_kept']:.1%}" for t in budget["backoff"])
            line += f"; backed off {len(budget['backoff']) - 1} time(s) as tasks measured worse than predicted ({kept} kept)"
        lines.append(line)
    orders: dict[str, int] = {}
    for g in report.get("groups", []):
        if len(g["layers"]) > 1:
            lines.append(f"tied group (one matching): {', '.join(g['layers'])}")
        if len(g.get("order", [])) > 2:
            key = " -> ".join(g["order"])
            orders[key] = orders.get(key, 0) + 1
    if orders:
        lines.append("task order chosen (groups): " + "; ".join(f"{k} ({v})" for k, v in orders.items()))
    if report.get("samples"):
        lines.append("calibration samples per task: " + ", ".join(
            f"{t['name']} {n}" for t, n in zip(report["tasks"], report["samples"])))
    if report.get("restored_at"):
        lines.append(f"channel order restored before: {', '.join(report['restored_at'])}")
    if report.get("attention"):
        lines.append(f"attention blocks ({len(report['attention'])}; heads are not tied: each task's Q/K/V output is "
                     f"restored to its order before the heads split): " + "; ".join(report["attention"]))
    eq = report.get("equivalence", {})
    lines.append(f"equivalence check (zipped model vs. per-task zipped networks): max abs diff "
                 f"{report['equivalence_max_abs_diff']:.3g} (tolerance {eq.get('tolerance', 0):.3g}, the models' own "
                 f"float noise {eq.get('float_noise', 0):.3g})  [{eq.get('verdict', 'ok')}]")
    for row in report.get("not_shared", []):
        lines.append(f"not shared: {row['layer']}: {row['reason']}")
    if "deployment_problems" in report:
        problems = report["deployment_problems"]
        lines.append("TensorRT-ready (opset <= 20, batch the only dynamic dim, constants folded, standard ops, weights "
                     "as initializers): " + ("yes" if not problems else
                                             f"no, {len(problems)} problem(s); first: {problems[0]}"))
    if report.get("phases"):
        lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report["phases"].items())
                     + f"; peak memory {report.get('peak_rss_mb', 0):.0f} MB")
    return "\n".join(lines)


def layer_errors(row: dict[str, Any]) -> tuple[float | None, float | None]:
    """A report layer's predicted and measured pre-activation error, summed over tasks, relative to
    the summed signal (None where not known)."""
    err = row.get("error")
    if not err:
        return None, None
    signal = max(sum(err["signal"]), 1e-300)
    pred = None if err["predicted"] is None else sum(err["predicted"]) / signal
    return pred, sum(err["measured"]) / signal


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
