"""What the user gets: sizes, per-layer sharing, per-task fidelity and accuracy; table and JSON."""
from __future__ import annotations

import json
import os
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


def fidelity(zipped: np.ndarray, original: np.ndarray) -> dict[str, float | None]:
    """Relative output error ||z - o|| / ||o|| and top-1 agreement (class axis 1) where meaningful."""
    z, o = np.asarray(zipped, np.float64), np.asarray(original, np.float64)
    rel = float(np.linalg.norm(z - o) / max(np.linalg.norm(o), 1e-30))
    top1 = float(np.mean(z.argmax(axis=1) == o.argmax(axis=1))) if o.ndim >= 2 and o.shape[1] > 1 else None
    return {"rel_err": rel, "top1_agreement": top1, "max_abs_diff": float(np.max(np.abs(z - o))) if z.size else 0.0}


def format_table(report: dict[str, Any]) -> str:
    """A plain-text summary of a zip report."""
    lines = [f"{'layer':<28} {'neurons':>8} {'shared':>8} {'cost':>12}"]
    for row in report["layers"]:
        lines.append(f"{row['name'][:28]:<28} {row['neurons']:>8} {row['shared']:>8} {row['cost']:>12.4g}")
    lines.append("")
    lines.append(f"{'task':<20} {'rel_err':>10} {'top1_agree':>11} {'max_abs_diff':>13}")
    for t in report["tasks"]:
        cells = [("-" if t[k] is None else f"{t[k]:.4g}") for k in ("rel_err", "top1_agreement", "max_abs_diff")]
        lines.append(f"{t['name'][:20]:<20} {cells[0]:>10} {cells[1]:>11} {cells[2]:>13}")
    lines.append("")
    pb, pa, bb, ba = (report[k] for k in ("params_before", "params_after", "bytes_before", "bytes_after"))
    lines.append(f"parameters {pb:,} -> {pa:,} ({pa / pb:.1%});  weight bytes {_mb(bb)} -> {_mb(ba)}")
    orders: dict[str, int] = {}
    for g in report.get("groups", []):
        if len(g["layers"]) > 1:
            lines.append(f"tied group (one matching): {', '.join(g['layers'])}")
        if len(g.get("order", [])) > 2:
            key = " -> ".join(g["order"])
            orders[key] = orders.get(key, 0) + 1
    if orders:
        lines.append("task order chosen (groups): " + "; ".join(f"{k} ({v})" for k, v in orders.items()))
    if report.get("restored_at"):
        lines.append(f"channel order restored before: {', '.join(report['restored_at'])}")
    lines.append(f"equivalence check (zipped model vs. per-task zipped networks): max abs diff "
                 f"{report['equivalence_max_abs_diff']:.3g}  [ok]")
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def write_json(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``report`` as JSON atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
