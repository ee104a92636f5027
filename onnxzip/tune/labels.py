"""Light retraining with labels (``--finetune``): each task's classifier output on its own
labelled data, cross-entropy, through :func:`onnxzip.tune.train.train`. A seeded fifth of each
task's samples is held out: the weights kept are those with the lowest held-out loss, the given
ones included, so a run that only makes the model worse returns it as it was (and says so)."""
from __future__ import annotations

import logging

import numpy as np
import onnx

from .train import Progress, Samples, Schedule, Target, train

log = logging.getLogger(__name__)
#: the fraction of each task's labelled samples held out to choose the weights kept (seeded)
HOLD_OUT = 0.2


def finetune(model: onnx.ModelProto, tasks: list[str], data: list[dict[str, np.ndarray]], labels: list[np.ndarray],
             outputs: list[str], *, steps: int = 200, lr: float = 1e-3, batch: int = 32, seed: int = 0,
             device: str = "cpu", progress: Progress = lambda it, d: it, hold_out: float = HOLD_OUT
             ) -> onnx.ModelProto:
    """Adam on the sum of the tasks' cross-entropy losses; returns the model with the weights that
    did best on the held-out samples (those given, where none did better).

    Args:
        model: a zipped model; tasks: task names; data: per task its inputs (by zipped input name);
        labels: per task (N,) int class labels; outputs: per task the logits output it is trained on.
        hold_out: the fraction held out (0: fitted to all, the last weights kept).
    """
    from ..tasks import split  # (the zip's seeded split; imported here: tasks imports the tuning)
    fit, held = [], []
    for x, y, out in zip(data, labels, outputs):
        mine, out_idx = split(len(y), hold_out)
        fit.append(Samples({k: v[mine] for k, v in x.items()}, [Target(out, y[mine], "cross-entropy")]))
        if out_idx.size:
            held.append(Samples({k: v[out_idx] for k, v in x.items()}, [Target(out, y[out_idx], "cross-entropy")]))
    if len(held) < len(fit):  # (a task too small to hold any out: every task fitted to all, no choice)
        fit, held = [Samples(x, [Target(out, y, "cross-entropy")]) for x, y, out in zip(data, labels, outputs)], []
    schedule = Schedule(steps, lr, batch, seed, patience=steps)  # (every step run: the best kept, not an early stop)
    tuned, record = train(model, fit, held, schedule, device, progress, "fine-tuning")
    if held and record.best_step == 0:
        log.warning("fine-tuning never lowered the loss on the %d held-out samples (%.4g at the start) over %d "
                    "steps at --lr %g: the model is kept as it was given", sum(h.n for h in held), record.held_before,
                    record.steps_run, lr)
    return tuned
