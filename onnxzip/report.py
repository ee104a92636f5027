"""What the user gets: sizes, per-layer sharing, per-task fidelity and accuracy; table and JSON."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper



def count_parameters(tensors: list[onnx.TensorProto] | list[np.ndarray]) -> tuple[int, int]:
    """(float parameters, bytes of all given tensors)."""
    params = nbytes = 0
    for t in tensors:
        a = numpy_helper.to_array(t) if isinstance(t, onnx.TensorProto) else np.asarray(t)
        nbytes += a.nbytes
        if a.dtype.kind == "f":
            params += a.size
    return params, nbytes


#: a task whose measured fidelity falls below these has collapsed (printed as a warning)
COLLAPSE = {"top1_agreement": 0.5, "mask_iou": 0.5, "rel_err": 0.5}
#: ... and below these it is degraded (said in the table)
DEGRADED = {"top1_agreement": 0.9, "mask_iou": 0.9, "rel_err": 0.1}


def fidelity(zipped: np.ndarray, original: np.ndarray, threshold: float = 0.5, kind: str = "values"
             ) -> dict[str, float | None]:
    """How well ``zipped`` reproduces ``original`` (one output, samples first, any shape).

    Always: relative error ||z - o|| / ||o|| and the max abs difference. ``kind`` "classifier"
    (class axis 1): top-1 agreement. "scores" (detector scores, probability maps): masks at
    ``threshold`` compared, as IoU over all elements (1 where both are empty), and ``fired``: zipped
    positives / original positives (None where the original has none).
    """
    z, o = np.asarray(zipped, np.float64), np.asarray(original, np.float64)
    rel = float(np.linalg.norm(z - o) / max(np.linalg.norm(o), 1e-30))
    out: dict[str, float | None] = {"rel_err": rel, "top1_agreement": None, "mask_iou": None, "fired": None,
                                    "max_abs_diff": float(np.max(np.abs(z - o))) if z.size else 0.0}
    if kind == "classifier" and o.ndim >= 2 and o.shape[1] > 1:
        out["top1_agreement"] = float(np.mean(z.argmax(axis=1) == o.argmax(axis=1)))
    elif kind == "scores":
        mz, mo = z > threshold, o > threshold
        union = np.count_nonzero(mz | mo)
        out["mask_iou"] = float(np.count_nonzero(mz & mo) / union) if union else 1.0
        out["fired"] = float(np.count_nonzero(mz) / np.count_nonzero(mo)) if mo.any() else None
    return out


def output_loss(zipped: np.ndarray, original: np.ndarray) -> float:
    """The measured loss increase per sample of one output (N, ...): for class scores (N, C>1) the
    mean KL(original || zipped) of the class distributions (softmax of logits) in nats, else
    1/2 mean_samples sum_elements (z - o)^2 (the Gauss-Newton loss of a random projection)."""
    z, o = np.asarray(zipped, np.float64), np.asarray(original, np.float64)
    n = max(o.shape[0], 1) if o.ndim else 1
    if o.ndim == 2 and o.shape[1] > 1:
        p, q = _distribution(o), _distribution(z)
        return float(np.mean(np.sum(p * (np.log(np.maximum(p, 1e-12)) - np.log(np.maximum(q, 1e-12))), axis=1)))
    return float(0.5 * np.sum((z - o) ** 2) / n)


def _distribution(y: np.ndarray) -> np.ndarray:
    """Rows that are probabilities as they are; logits through a softmax."""
    if np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3):
        return y
    e = np.exp(y - y.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def verdict(row: dict[str, Any]) -> str:
    """'ok', 'degraded' or 'collapsed' from a task's fidelity row (the decision metric where there
    is one: top-1 agreement or mask IoU; else the relative error)."""
    for key in ("top1_agreement", "mask_iou"):
        if row.get(key) is not None:
            if row[key] < COLLAPSE[key] or (key == "mask_iou" and row.get("fired") == 0.0):
                return "collapsed"
            return "degraded" if row[key] < DEGRADED[key] else "ok"
    rel = row.get("rel_err")
    if rel is None:
        return "ok"
    return "collapsed" if rel > COLLAPSE["rel_err"] else "degraded" if rel > DEGRADED["rel_err"] else "ok"


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


def write_json(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``report`` as JSON atomically."""
    _write(path, json.dumps(report, indent=2) + "\n")


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``report`` atomically: one self-contained HTML page for ``.html``/``.htm``
    (:mod:`onnxzip.report_html`), else JSON."""
    if str(path).lower().endswith((".html", ".htm")):
        from .report_html import render
        _write(path, render(report))
    else:
        write_json(report, path)


def _write(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically (a temporary file renamed), making missing folders."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
