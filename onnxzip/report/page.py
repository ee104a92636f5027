"""The zip report as one self-contained HTML page: tables and inline SVG plots (matplotlib).

Sections: the result in numbers (parameters, bytes, fidelity per task), per-layer sharing and cost,
predicted against measured error, the budget's allocation, groups and restore points, the
deployment lint, timing, and the options and inputs that reproduce the run.
"""
from __future__ import annotations

import html
import io
import json
from typing import Any

from ..errors import UsageError
from .records import LOSS_UNITS, LayerRow, TaskRow, ZipReport, not_shared_lines, shape_text
from .terminal import sizes_lines

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.bad { color: #b00; font-weight: bold; } .ok { color: #070; }
figure { margin: 0.8em 0; } code { background: #f4f4f4; padding: 0 3px; }
"""


#: the per-layer chart's widest figure (inches: the page's column), the most layer names on its axis,
#: and the smallest cost its log axis shows, relative to the largest
MAX_WIDTH, MAX_TICKS, COST_RANGE = 11.0, 40, 1e-8


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UsageError("an HTML report needs matplotlib: pip install 'onnxzip[report]'") from None
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # (text stays text: smaller, searchable, the page's font)
    import matplotlib.pyplot as plt
    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    fig.clf()
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # inline: no XML prolog
    return text.replace("<svg ", '<svg style="max-width:100%;height:auto" ', 1)  # (never wider than the page)


class Markup(str):
    """HTML this module wrote itself (every other cell is escaped)."""


def _table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    def cell(v: Any, i: int, tag: str) -> str:
        cls = ' class="l"' if i < left else ""
        if isinstance(v, float):
            v = f"{v:.4g}"
        return f"<{tag}{cls}>{v if isinstance(v, Markup) else html.escape(str(v))}</{tag}>"
    head = "".join(cell(h, i, "th") for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell(v, i, "td") for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _label(text: str) -> str:
    """A name as a matplotlib label: no math text (a ``$`` in a layer name is a character)."""
    return str(text).replace("$", r"\$")


def _layers_plot(plt, layers: list[LayerRow]) -> str:
    names = [_label(row.name[-24:]) for row in layers]
    x = range(len(layers))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(min(max(6.0, 0.45 * len(layers) + 2), MAX_WIDTH), 6.2), sharex=True)
    ax1.bar(x, [row.neurons for row in layers], color="#ccd", label="neurons")
    ax1.bar(x, [row.shared for row in layers], color="#36c", label="shared")
    ax1.set_ylabel("neurons")
    ax1.legend(fontsize=8)
    ax1.set_title("shared neurons per layer")
    costs = [max(float(row.cost or 0.0), 0.0) for row in layers]
    ax2.bar(x, costs, color="#c63")
    if any(c > 0 for c in costs):
        ax2.set_yscale("log")
        top = max(costs)
        ax2.set_ylim(max(min(c for c in costs if c > 0), top * COST_RANGE), top * 2)  # (a 1e-41 would stretch it)
    ax2.set_ylabel("predicted cost")
    ax2.set_title("cost of the shared neurons (the matching's objective)")
    every = max(1, -(-len(layers) // MAX_TICKS))  # (at most MAX_TICKS names: every k-th layer named)
    ax2.set_xticks(list(x)[::every])
    ax2.set_xticklabels(names[::every], rotation=60, ha="right", fontsize=7)
    ax2.set_xlabel("layer" if every == 1 else f"layer (every {every}th named)")
    return _svg(fig)


def _error_plot(plt, layers: list[LayerRow], tasks: list[str]) -> str | None:
    pts = []
    for row in layers:
        err = row.error
        if err and err.predicted and err.measured and err.signal:
            for t, (p, m, s) in enumerate(zip(err.predicted, err.measured, err.signal)):
                if s and p is not None and m is not None:
                    pts.append((t, p / s, m / s))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for t, name in enumerate(tasks):
        mine = [(p, m) for tt, p, m in pts if tt == t]
        ax.scatter([p for p, _ in mine], [m for _, m in mine], s=18, label=_label(name))
    lo = max(min(min(p, m) for _, p, m in pts), 1e-12)
    hi = max(max(p, m) for _, p, m in pts)
    ax.plot([lo, hi], [lo, hi], color="#888", linestyle=":", label="measured = predicted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted (relative to the signal)")
    ax.set_ylabel("measured in ONNX Runtime")
    ax.set_title("per-layer pre-activation error")
    ax.legend(fontsize=8)
    return _svg(fig)


def _tasks_plot(plt, tasks: list[TaskRow]) -> str:
    """Each task's decision metric, named beside the task (top-1 agreement, mask IoU, or 1 - relative error)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    names, values, metrics = [], [], set()
    for t in tasks:
        if t.top1_agreement is not None:
            value, metric = t.top1_agreement, "top-1 agreement"
        elif t.mask_iou is not None:
            value, metric = t.mask_iou, "mask IoU"
        else:
            value, metric = max(0.0, 1.0 - float(t.rel_err or 0.0)), "1 - relative error"
        names.append(_label(f"{t.name} ({metric})"))
        values.append(value)
        metrics.add(metric)
    ax.barh(names, values, color=["#36c" if t.verdict == "ok" else "#c33" for t in tasks])
    ax.set_xlim(0, 1.0)
    ax.set_xlabel(metrics.pop() if len(metrics) == 1 else "each task's metric (beside its name)")
    ax.set_title("fidelity of each task against its original (blue: ok, red: not)")
    return _svg(fig)


def render(report: ZipReport) -> str:
    """The report (as :func:`onnxzip.zip_models` returns it, or read back from its JSON) as HTML."""
    plt = _pyplot()
    names = [t.name for t in report.tasks]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>onnxzip report</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>onnxzip report: {html.escape(', '.join(names))}</h1>"]
    parts += _result(plt, report) + _layers(plt, report) + _budget_and_structure(report) + _checks_and_time(report)
    parts.append("</body></html>")
    plt.close("all")
    return "\n".join(parts)


def _result(plt, report: ZipReport) -> list[str]:
    pb, pa, bb, ba = report.params_before, report.params_after, report.bytes_before, report.bytes_after
    parts = ["<h2>Result</h2>" + _table(
        ["", "before", "after", "kept"],
        [["parameters", f"{pb:,}", f"{pa:,}", f"{pa / max(pb, 1):.1%}"],
         ["weight bytes", f"{bb:,}", f"{ba:,}", f"{ba / max(bb, 1):.1%}"]])]
    rows = []
    for t in report.tasks:
        verdict = t.verdict or ""
        style = "ok" if verdict == "ok" else "bad"
        rows.append([t.name, t.output or "", _or_dash(t.top1_agreement), _or_dash(t.mask_iou), _or_dash(t.rel_err),
                     _or_dash(t.max_abs_diff), _or_dash(t.loss_increase),
                     Markup(f'<span class="{style}">{html.escape(verdict)}</span>')])
    parts.append("<p>Each task against its original, measured on the " +
                 html.escape(str(report.metrics_on or "calibration data")) + ".</p>" +
                 _table(["task", "output", "top-1 agreement", "mask IoU", "rel. error", "max abs diff",
                         "loss increase", "verdict"], rows, left=2))
    if report.tasks:
        parts.append(f"<figure>{_tasks_plot(plt, report.tasks)}</figure>")
    return parts


def _or_dash(value: Any) -> Any:
    return "-" if value is None else value


def _layers(plt, report: ZipReport) -> list[str]:
    layers = report.layers
    if not layers:
        return []
    parts = ["<h2>Layers</h2>" + f"<figure>{_layers_plot(plt, layers)}</figure>",
             _table(["layer", "kind", "neurons", "shared", "cost", "group"],
                    [[r.name, r.kind, r.neurons, r.shared, float(r.cost or 0.0), "" if r.group is None else r.group]
                     for r in layers], left=2)]
    err = _error_plot(plt, layers, [t.name for t in report.tasks])
    if err:
        parts.append("<h2>Predicted against measured error</h2><p>Per layer and task: the merge's prediction "
                     "of the pre-activation error, and what ONNX Runtime measured with the layers below zipped "
                     "(both relative to the original's signal).</p>" + f"<figure>{err}</figure>")
    return parts


def _budget_and_structure(report: ZipReport) -> list[str]:
    parts = []
    budget = report.budget
    if budget:
        scale = budget.loss_scale
        target = budget.target_params
        reached = "-" if target is None else f"{100 * report.params_kept:.1f}% kept" + (
            " (not reached)" if report.params_kept > target + 0.005 else "")
        parts.append("<h2>Budget</h2>" + _table(
            ["", "value"], [["target parameters", target or "-"], ["parameters kept", reached],
                            ["max loss increase (measured units)",
                             "-" if budget.max_loss_increase is None else budget.max_loss_increase],
                            [f"predicted cost ({report.cost_units or 'pre-activation'} units)",
                             budget.predicted_cost or "-"],
                            ["predicted loss (through the loss scale)", budget.predicted_loss or "-"],
                            ["loss scale: loss = scale x cost^power",
                             f"{scale.scale:.3g} x cost^{scale.power:.2f}, {scale.zips} zip(s)" if scale else "-"],
                            [f"measured loss ({LOSS_UNITS})", budget.measured_loss or "-"],
                            ["shared per group", ", ".join(str(c) for c in budget.counts)],
                            ["zips measured", max(len(budget.backoff), 1) + len(budget.compared)]]))
    if report.groups:
        parts.append("<h2>Groups (one matching each)</h2>" + _table(
            ["group", "layers", "shared", "size", "matching s", "matched by"],
            [[g if x.index is None else x.index, ", ".join(x.layers), x.choice.shared if x.choice else "",
              " x ".join(str(c) for c in x.choice.cost_matrix) if x.choice else "",
              x.choice.matching_seconds if x.choice else "", x.choice.matching if x.choice else ""]
             for g, x in enumerate(report.groups)], left=2))
    restored = report.restored_at
    parts.append("<p>Channel order restored before: " + (html.escape(", ".join(restored)) if restored else "nothing")
                 + ".</p>")
    if report.attention:
        parts.append("<p>Attention blocks (tied heads run on the zipped Q, K and V, whole heads shared; restored "
                     "ones on each task's own channel order):</p><ul>" +
                     "".join(f"<li>{html.escape(a)}</li>" for a in report.attention) + "</ul>")
    for line in not_shared_lines(report.not_shared):
        parts.append(f"<p>Not shared: {html.escape(line)}</p>")
    return parts


def _checks_and_time(report: ZipReport) -> list[str]:
    eq = report.equivalence
    parts = ["<h2>Checks</h2><p>Equivalence (the zipped model against the per-task zipped networks): max abs "
             f"diff {eq.max_abs_diff:.3g}, tolerance {eq.tolerance:.3g}, verdict {html.escape(str(eq.verdict))}.</p>"]
    if report.model_inputs:
        parts.append("<p>The zipped model's inputs: " + html.escape(", ".join(
            f"{k} {shape_text(v)}" for k, v in report.model_inputs.items())) + "</p>")
    if report.sizes is not None:
        parts.append("<p>" + "<br>".join(html.escape(line) for line in sizes_lines(report.sizes, int(
            (report.options or {}).get("batch_size", 64)))) + "</p>")
    problems = report.deployment_problems
    if problems is not None:
        parts.append("<p>TensorRT-ready: " + ("yes" if not problems else "<span class='bad'>no</span><ul>" +
                     "".join(f"<li>{html.escape(p)}</li>" for p in problems) + "</ul>") + "</p>")
    if report.phases:
        parts.append("<h2>Time</h2>" + _table(["phase", "seconds"], [[k, v] for k, v in report.phases.items()]) +
                     f"<p>Peak memory {report.peak_rss_mb or 0:.0f} MB"
                     + (f" (reached in {html.escape(report.peak_phase)})" if report.peak_phase else "")
                     + f"; {report.seconds or 0:.1f} s in all.</p>")
        if report.floor is not None:
            parts.append("<p>" + "<br>".join(html.escape(line) for line in report.floor.lines()) + "</p>")
        if report.memory is not None:
            parts.append(f"<p>{html.escape(report.memory.line(report.peak_rss_mb, report.peak_phase))}</p>")
    parts.append("<h2>Provenance</h2>" + _table(
        ["task", "model", "model SHA-256", "data", "data SHA-256"],
        [[i.task, i.model or "-", (i.model_sha256 or "")[:16], i.data or "-", (i.data_sha256 or "")[:16]]
         for i in report.inputs or []], left=5))
    parts.append(f"<p>onnxzip {html.escape(str(report.onnxzip_version or ''))}; options:</p><pre>"
                 + html.escape(json.dumps(report.options or {}, indent=1)) + "</pre>")
    return parts
