"""Light retraining with labels (``--finetune``): each task's classifier output on its own
labelled data, cross-entropy, through :func:`onnxzip.tune.train.train`."""
from __future__ import annotations

import numpy as np
import onnx

from .train import Progress, Samples, Schedule, Target, train


def finetune(model: onnx.ModelProto, tasks: list[str], data: list[dict[str, np.ndarray]], labels: list[np.ndarray],
             outputs: list[str], *, steps: int = 200, lr: float = 1e-3, batch: int = 32, seed: int = 0,
             device: str = "cpu", progress: Progress = lambda it, d: it) -> onnx.ModelProto:
    """Adam on the sum of the tasks' cross-entropy losses; returns the model with trained weights.

    Args:
        model: a zipped model; tasks: task names; data: per task its inputs (by zipped input name);
        labels: per task (N,) int class labels; outputs: per task the logits output it is trained on.
    """
    groups = [Samples(x, [Target(out, y, "cross-entropy")]) for x, y, out in zip(data, labels, outputs)]
    return train(model, groups, [], Schedule(steps, lr, batch, seed), device, progress, "fine-tuning")[0]

