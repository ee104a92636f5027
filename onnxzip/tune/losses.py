"""The losses a zipped output is tuned on, each with its gradient, in numpy.

Every loss is a mean over the batch's samples (KL and cross-entropy summed over classes, the others
a mean over elements, so an output's size does not weigh): the value (float) and the gradient with
respect to the output (the seed of the reverse graph, float32).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..registry import Registry

EPS = 1e-7
#: the softmax temperature of distillation on logits (Hinton et al.); measured on the sample pairs at
#: share 1: T = 2 and 4 beat T = 1 by about half a point on the held-out test images
TEMPERATURE = 2.0


@dataclass(frozen=True)
class Loss:
    """``grad(output (B, ...), target (B, ...), scale) -> (loss, d loss / d output)``; ``scale``:
    the target's variance where the loss divides by it (squared error), else 1."""

    grad: Callable[[np.ndarray, np.ndarray, float], tuple[float, np.ndarray]]
    labels: bool = False  # the target is integer class labels


LOSSES: Registry[Loss] = Registry("loss")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def is_distribution(y: np.ndarray) -> bool:
    """Whether rows (class axis 1) are probabilities already (a Softmax output), not logits."""
    return bool(np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3))


def _cross_entropy(z: np.ndarray, y: np.ndarray, scale: float) -> tuple[float, np.ndarray]:
    """Labels: mean cross-entropy of softmax(logits z) against integer labels y."""
    z64 = z.astype(np.float64)
    p = _softmax(z64)
    b = len(y)
    loss = float(np.mean(-np.log(np.maximum(p[np.arange(b), y], 1e-30))))
    return loss, ((p - np.eye(p.shape[1])[y]) / b).astype(np.float32)


def _kl(z: np.ndarray, t: np.ndarray, scale: float) -> tuple[float, np.ndarray]:
    """Class scores (class axis 1): mean KL(original || zipped) of the class distributions, in nats;
    probability rows as they are, logits through a softmax at :data:`TEMPERATURE` (the loss times
    T^2, so its gradient keeps the scale of T = 1)."""
    b = len(z)
    z64, t64 = z.astype(np.float64), t.astype(np.float64)
    if is_distribution(z64):
        p, q = (t64 if is_distribution(t64) else _softmax(t64)), np.maximum(z64, EPS)
        loss = float(np.sum(p * (np.log(np.maximum(p, EPS)) - np.log(q))) / b)
        return loss, (-p / q / b).astype(np.float32)
    temp = TEMPERATURE
    p, q = _softmax(t64 / temp), _softmax(z64 / temp)
    loss = float(np.sum(p * (np.log(np.maximum(p, EPS)) - np.log(np.maximum(q, EPS)))) / b) * temp * temp
    return loss, ((q - p) * temp / b).astype(np.float32)


def _bce(s: np.ndarray, t: np.ndarray, scale: float) -> tuple[float, np.ndarray]:
    """Scores in (0, 1) (a Sigmoid's: detector scores, probability maps): binary cross-entropy
    against the original's scores, less its entropy (0 when equal), mean over elements and samples."""
    s64 = np.clip(s.astype(np.float64), EPS, 1 - EPS)
    t64 = np.clip(t.astype(np.float64), 0.0, 1.0)
    per = s.size
    loss = float(np.sum(t64 * np.log(np.maximum(t64, EPS) / s64) +
                        (1 - t64) * np.log(np.maximum(1 - t64, EPS) / (1 - s64))) / per)
    return loss, ((s64 - t64) / (s64 * (1 - s64)) / per).astype(np.float32)


def _squared(z: np.ndarray, t: np.ndarray, scale: float) -> tuple[float, np.ndarray]:
    """Any values: squared error relative to the original's variance, mean over elements and samples."""
    d = z.astype(np.float64) - t
    per = z.size * max(scale, 1e-12)  # (scale: the target's variance, floored by distill at a share of its power)
    return float(np.sum(d * d) / per), (2 * d / per).astype(np.float32)


LOSSES.add("cross-entropy", Loss(_cross_entropy, labels=True))
LOSSES.add("kl", Loss(_kl))
LOSSES.add("bce", Loss(_bce))
LOSSES.add("squared", Loss(_squared))

#: the loss each output kind (:func:`onnxzip.check.verify.output_kind`) is distilled on
FOR_KIND = {"classifier": "kl", "scores": "bce", "values": "squared"}
