"""How well each task's zipped network reproduces its original: fidelity, output loss, verdict; sizes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..report.records import TaskRow


def count_parameters(tensors: list[onnx.TensorProto] | list[np.ndarray]) -> tuple[int, int]:
    """(float parameters, bytes of all given tensors)."""
    params = nbytes = 0
    for t in tensors:
        a = numpy_helper.to_array(t) if isinstance(t, onnx.TensorProto) else np.asarray(t)
        nbytes += a.nbytes
        if a.dtype.kind == "f":
            params += a.size
    return params, nbytes


def file_parameters(model: onnx.ModelProto) -> tuple[int, int]:
    """(float parameters, bytes) a model file holds: its initializers and Constant nodes' values."""
    constants = [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    return count_parameters(list(model.graph.initializer) + constants)


#: a task whose measured fidelity falls below these has collapsed (printed as a warning)
COLLAPSE = {"top1_agreement": 0.5, "mask_iou": 0.5, "rel_err": 0.5}
#: ... and below these it is degraded (said in the table)
DEGRADED = {"top1_agreement": 0.9, "mask_iou": 0.9, "rel_err": 0.1}
#: the evidence a verdict needs: held-out samples for top-1 agreement and the relative error, positive
#: positions (in either mask) for mask IoU; with less the verdict is :data:`TOO_FEW`, never "ok"
EVIDENCE = {"top1_agreement": 20, "mask_iou": 20, "rel_err": 10}
TOO_FEW = "too few to judge"
#: the verdict where nothing was held out on purpose (``--hold-out 0``): the same standing as TOO_FEW
NOT_JUDGED = "not judged (--hold-out 0)"


@dataclass
class Fidelity:
    """How well one output reproduces its original: relative error, max abs difference, and where
    they apply top-1 agreement (class scores) or mask IoU and ``fired`` (scores, probability maps)."""

    rel_err: float
    max_abs_diff: float
    top1_agreement: float | None = None
    mask_iou: float | None = None
    fired: float | None = None  # zipped positives / original positives (None where the original has none)
    evidence: int = 0  # what the decision metric counts: samples, or positive positions for mask IoU


def fidelity(zipped: np.ndarray, original: np.ndarray, threshold: float = 0.5, kind: str = "values") -> Fidelity:
    """How well ``zipped`` reproduces ``original`` (one output, samples first, any shape).

    Always: relative error ||z - o|| / ||o|| and the max abs difference. ``kind`` "classifier"
    (class axis 1): top-1 agreement. "scores" (detector scores, probability maps): masks at
    ``threshold`` compared, as IoU over all elements (1 where both are empty), and ``fired``.
    """
    z, o = np.asarray(zipped, np.float64), np.asarray(original, np.float64)
    out = Fidelity(float(np.linalg.norm(z - o) / max(np.linalg.norm(o), 1e-30)),
                   float(np.max(np.abs(z - o))) if z.size else 0.0, evidence=int(o.shape[0]) if o.ndim else 1)
    if kind == "classifier" and o.ndim >= 2 and o.shape[1] > 1:
        out.top1_agreement = float(np.mean(z.argmax(axis=1) == o.argmax(axis=1)))
    elif kind == "scores":
        mz, mo = z > threshold, o > threshold
        union = np.count_nonzero(mz | mo)
        out.mask_iou = float(np.count_nonzero(mz & mo) / union) if union else 1.0
        out.evidence = int(union)
        out.fired = float(np.count_nonzero(mz) / np.count_nonzero(mo)) if mo.any() else None
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


def verdict(row: Fidelity | TaskRow) -> str:
    """'ok', 'degraded' or 'collapsed' from a task's fidelity (the decision metric where there is
    one: top-1 agreement or mask IoU; else the relative error), or :data:`TOO_FEW` where the metric
    counts less than its :data:`EVIDENCE`."""
    key = next((k for k in ("top1_agreement", "mask_iou") if getattr(row, k) is not None), "rel_err")
    value = getattr(row, key)
    if value is None:
        return "ok"
    if key == "mask_iou" and row.fired == 0.0:
        return "collapsed"  # (it found nothing the original found: no count makes that better)
    if (row.evidence or 0) < EVIDENCE[key]:
        return TOO_FEW
    if key == "rel_err":
        return "collapsed" if value > COLLAPSE[key] else "degraded" if value > DEGRADED[key] else "ok"
    if value < COLLAPSE[key] or (key == "mask_iou" and row.fired == 0.0):
        return "collapsed"
    return "degraded" if value < DEGRADED[key] else "ok"
