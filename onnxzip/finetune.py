"""Light retraining with labels: a few hundred Adam steps on a zipped model, gradients through ORT.

The zipped model's float initializers become inputs of a fixed-batch training copy, and ``onnx-ad``
builds its reverse-mode graph. Each step runs every task on a batch of its own labelled data with
the cross-entropy gradient seeded on that task's outputs only; gradients are summed over tasks, so a
shared initializer (one tensor used by several tasks) receives the sum of their gradients. The
result is the same inference graph with the trained values.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .calibrate import autodiff, runtime
from .errors import InputError, UsageError
from .graph import io

log = logging.getLogger(__name__)


def training_model(model: onnx.ModelProto, batch: int) -> tuple[onnx.ModelProto, list[str], dict[str, str]]:
    """The reverse-mode model of ``model`` w.r.t. its float initializers, at a fixed batch.

    Returns:
        the model, the parameter names, parameter -> its gradient output.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    params = [i for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) > 0]
    names = [p.name for p in params]
    for p in params:
        m.graph.input.append(helper.make_tensor_value_info(p.name, p.data_type, list(p.dims)))
    keep = [i for i in m.graph.initializer if i.name not in set(names)]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    for inp in m.graph.input:
        if inp.name not in names and inp.type.tensor_type.shape.dim:
            inp.type.tensor_type.shape.dim[0].dim_value = batch
    del m.graph.value_info[:]
    m = io.infer_shapes(m)
    outputs = [o.name for o in m.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    reverse = autodiff.reverse(m, names, outputs)
    grads = {n: autodiff.adjoint(n) for n in names}
    missing = [g for g in grads.values() if g not in {o.name for o in reverse.graph.output}]
    if missing:
        raise UsageError(f"onnx-ad gave no gradient output {missing[0]!r}")
    return reverse, names, grads


def finetune(model: onnx.ModelProto, tasks: list[str], data: list[dict[str, np.ndarray]], labels: list[np.ndarray],
             outputs: list[str], *, steps: int = 200, lr: float = 1e-3, batch: int = 32, seed: int = 0,
             device: str = "cpu", progress: Callable[[Iterable, str], Iterable] = lambda it, d: it
             ) -> onnx.ModelProto:
    """Adam on the sum of the tasks' cross-entropy losses; returns the model with trained weights.

    Args:
        model: a zipped model; tasks: task names; data: per task its inputs (by zipped input name);
        labels: per task (N,) int class labels; outputs: per task the logits output it is trained on.
    """
    reverse, names, grads = training_model(model, batch)
    sess = runtime.session(reverse, device, built=True)
    values = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in model.graph.initializer
              if i.name in set(names)}
    m1 = {n: np.zeros_like(v) for n, v in values.items()}
    m2 = {n: np.zeros_like(v) for n, v in values.items()}
    inputs = {i.name: i for i in sess.get_inputs() if i.name not in values}
    seeds = [n for n in inputs if autodiff.is_adjoint(n)]
    rng = np.random.default_rng(seed)
    for step in progress(range(1, steps + 1), "fine-tuning"):
        total = {n: np.zeros_like(v) for n, v in values.items()}
        for t, (x, y, out) in enumerate(zip(data, labels, outputs)):
            idx = rng.choice(len(y), size=batch, replace=len(y) < batch)
            feeds = dict(values)
            for name, spec in inputs.items():
                if name in x:
                    feeds[name] = x[name][idx]
                elif not autodiff.is_adjoint(name):
                    shape = [batch] + [d if isinstance(d, int) else 1 for d in spec.shape[1:]]
                    feeds[name] = np.zeros(shape, np.float32)
            logits = sess.run([out], {**feeds, **{s: np.zeros(_shape(inputs[s], batch), np.float32) for s in seeds}})[0]
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            g = (p - np.eye(p.shape[1])[y[idx]]) / batch
            for s in seeds:
                feeds[s] = (g[..., None] if s == autodiff.adjoint(out) else np.zeros(_shape(inputs[s], batch))).astype(np.float32)
            got = sess.run([grads[n] for n in names], feeds)
            for n, gr in zip(names, got):
                total[n] += gr[..., 0]
        for n in names:  # Adam
            m1[n] = 0.9 * m1[n] + 0.1 * total[n]
            m2[n] = 0.999 * m2[n] + 0.001 * total[n] ** 2
            values[n] -= lr * (m1[n] / (1 - 0.9 ** step)) / (np.sqrt(m2[n] / (1 - 0.999 ** step)) + 1e-8)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name].astype(np.float32), init.name))
    return out


def _shape(spec, batch: int) -> list[int]:
    return [batch] + [d if isinstance(d, int) else 1 for d in spec.shape[1:]]


def check_labels(labels: np.ndarray, classes: int, source: str) -> np.ndarray:
    """Integer class labels in [0, classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= classes:
        raise InputError(f"{source}: labels must be integers in [0, {classes}), one per sample")
    return labels.astype(np.int64)
