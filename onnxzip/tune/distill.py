"""Distillation from the originals (``--distill``, ``onnxzip distill``), no labels: each task's
network in the zipped model is tuned to reproduce its own original model's outputs, through
:func:`onnxzip.tune.train.train`.

The originals teach on the fly: each step draws a batch of calibration inputs, mixes pairs of them
(``x = l a + (1 - l) b``, ``l`` uniform in [0, 1]: inputs the zip never saw, so 200 samples do not
run out) and runs every original on it. Tasks whose zipped model reads one shared input draw from
all their calibration samples together, and every original teaches on every batch: one forward and
backward pass per step for all of them. Each float output gets the loss of its kind
(:data:`onnxzip.tune.losses.FOR_KIND`): KL on class scores, binary cross-entropy on a Sigmoid's
scores and maps, squared error relative to the original's variance on anything else. The held-out
samples (unmixed, the originals' outputs on them) stop it early and choose the values kept.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from ..calibrate import runtime
from ..check.verify import as_array, data_groups, output_kind
from ..errors import UsageError
from ..graph.ir import batch_within
from .losses import FOR_KIND
from .train import Progress, Samples, Schedule, Target, TrainLog, train

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..options import ZipOptions
    from ..tasks import Tasks


@dataclass
class Teacher:
    """One original model run on a batch of the zipped model's inputs."""

    session: Any
    inputs: dict[str, str]  # the zipped model's input name -> the original's
    outputs: dict[str, str]  # the original's output name -> the zipped model's

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        got = self.session.run(list(self.outputs), {o: batch[z] for z, o in self.inputs.items()})
        return {self.outputs[o]: v for o, v in zip(self.outputs, got)}


@dataclass
class Taught(Samples):
    """Samples whose targets the originals compute on every drawn batch, of mixed pairs where
    ``mix`` (every input a float)."""

    teachers: list[Teacher] = field(default_factory=list)
    mix: bool = True

    def draw(self, rng: np.random.Generator, size: int) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        i = rng.choice(self.n, size=size, replace=self.n < size)
        batch = {k: v[i] for k, v in self.feeds.items()}
        if self.mix:
            j = rng.choice(self.n, size=size)
            lam = rng.uniform(0.0, 1.0, size).astype(np.float32)
            batch = {k: _mixed(v, self.feeds[k][j], lam) for k, v in batch.items()}
        got: dict[str, np.ndarray] = {}
        for teacher in self.teachers:
            got.update(teacher(batch))
        return batch, [got[t.output] for t in self.targets]


def _mixed(a: np.ndarray, b: np.ndarray, lam: np.ndarray) -> np.ndarray:
    w = lam.reshape((-1,) + (1,) * (a.ndim - 1))
    return (w * a + (1 - w) * b).astype(a.dtype)


def distill(model: onnx.ModelProto, tasks: Tasks, opts: ZipOptions, progress: Progress = lambda it, d: it
            ) -> tuple[onnx.ModelProto, TrainLog]:
    """Tune the zipped ``model`` of ``tasks`` to reproduce their originals (``tasks.protos``) for
    ``opts.distill`` steps, drawing from the samples the zip was fitted to; stopped early and kept
    at its best on the held-out ones."""
    fit = taught_groups(model, tasks, opts.device)
    held = target_groups(model, tasks, tasks.held, tasks.held_references) if tasks.held_out else []
    if not held:
        log.warning("distilling without held-out samples (%s): the last step's weights are kept, not checked "
                    "against the zip's own", "--hold-out 0" if not opts.hold_out else "too few to hold any out")
    batch = min(batch_within(ir, DISTILL_BATCH, runtime.RUN_BYTES // len(tasks.irs)) for ir in tasks.irs)
    return train(model, fit, held, Schedule(opts.distill, lr=DISTILL_LR, batch=batch), opts.device, progress,
                 "distilling")


#: Adam's step size for distillation (measured on the sample pairs: 1e-3 overshoots, 1e-4 is slow)
DISTILL_LR = 3e-4
#: an output's squared error is divided by its variance, at least this share of its mean square (an
#: output that hardly varies would otherwise outweigh every other)
VARIANCE_FLOOR = 1e-3
#: samples per step, fewer where one step's forward activations of all tasks would pass RUN_BYTES
DISTILL_BATCH = 32


def _io_names(model: onnx.ModelProto, task: str, proto: onnx.ModelProto) -> tuple[dict[str, str], dict[str, str]]:
    """A task's inputs (zipped name -> original name) and outputs (original -> zipped)."""
    zipped_in = {i.name for i in model.graph.input}
    zipped_out = {o.name for o in model.graph.output}
    inits = {i.name for i in proto.graph.initializer}
    inputs = {(k if k in zipped_in else f"{task}/{k}"): k for k in (i.name for i in proto.graph.input)
              if k not in inits}
    outputs = {o.name: f"{task}/{o.name}" for o in proto.graph.output if f"{task}/{o.name}" in zipped_out}
    return inputs, outputs


def _targets(model: onnx.ModelProto, tasks: Tasks, t: int, references: dict[str, Any], keep: bool) -> list[Target]:
    """Task ``t``'s float outputs as targets (the loss of each output's kind); ``keep``: with the
    originals' outputs ``references`` as the values, else drawn with each batch."""
    out = []
    zipped = {o.name for o in model.graph.output if o.type.HasField("tensor_type")
              and o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}  # (not a ZipMap's sequence)
    for o in tasks.irs[t].outputs:
        value = as_array(references[o])
        name = f"{tasks.names[t]}/{o}"
        if value is None or value.dtype.kind != "f" or name not in zipped:
            continue
        loss = FOR_KIND[output_kind(tasks.irs[t], o, value)]
        scale = max(float(np.var(value)), VARIANCE_FLOOR * float(np.mean(np.square(value, dtype=np.float64))))
        out.append(Target(name, value.astype(np.float32) if keep else None, loss, scale))
    return out


def taught_groups(model: onnx.ModelProto, tasks: Tasks, device: str) -> list[Taught]:
    """The training groups: one for all tasks when the zipped model gives them one shared input
    (their distinct calibration sets pooled), else one per task; the originals teach."""
    teachers, targets = [], []
    for t, proto in enumerate(tasks.protos):
        inputs, outputs = _io_names(model, tasks.names[t], proto)
        targets.append(_targets(model, tasks, t, tasks.references[t], keep=False))
        wanted = {x.output for x in targets[t]}
        teachers.append(Teacher(runtime.session(proto, device), inputs,
                                {o: z for o, z in outputs.items() if z in wanted}))
    shared = all(t.inputs == teachers[0].inputs for t in teachers)  # (the zipped model's inputs decide)
    groups = [list(range(len(tasks.names)))] if shared else [[t] for t in range(len(tasks.names))]
    if not any(targets):
        raise UsageError("nothing to distill: no task has a float tensor output in the zipped model")
    out = []
    for group in groups:
        sources = [group[g[0]] for g in data_groups([tasks.arrays[t] for t in group])]
        pooled = {z: np.concatenate([tasks.arrays[t][o] for t in sources])
                  for z, o in teachers[group[0]].inputs.items()}  # (shared inputs: the same names for all)
        mix = all(v.dtype.kind == "f" for v in pooled.values())
        out.append(Taught(pooled, [x for t in group for x in targets[t]], [teachers[t] for t in group], mix))
    return out


def target_groups(model: onnx.ModelProto, tasks: Tasks, data: list[dict[str, np.ndarray]],
                  references: list[dict[str, Any]]) -> list[Samples]:
    """Fixed samples with the originals' outputs on them as targets: per group of tasks with the
    same inputs (:func:`onnxzip.check.verify.data_groups`), their feeds by the zipped model's
    input names and every task's float outputs."""
    groups = []
    for group in data_groups(data):
        feeds: dict[str, np.ndarray] = {}
        for t in group:
            inputs, _ = _io_names(model, tasks.names[t], tasks.protos[t])
            feeds.update({z: data[t][o] for z, o in inputs.items() if o in data[t]})
        groups.append(Samples(feeds, [x for t in group for x in _targets(model, tasks, t, references[t], True)]))
    return groups
