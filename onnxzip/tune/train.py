"""The tuning loop: Adam on a zipped model's float initializers, gradients from ONNX Runtime.

The initializers become inputs of a fixed-batch copy of the model; ``onnx-ad`` builds its reverse
graph (:mod:`onnxzip.calibrate.autodiff`). Each step runs every group of samples (:class:`Samples`)
forward, takes each target's loss gradient in numpy (:mod:`.losses`), seeds the reverse graph with
it, and sums the parameter gradients over the groups, so a shared initializer (one tensor used by
several tasks) receives the sum of its tasks' gradients. Held-out samples, where given, are scored
every few steps; the best values seen (the starting ones included) are kept, and the loop stops
early once they stop improving. The result is the same inference graph with the tuned values.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..calibrate import autodiff, runtime
from ..errors import UsageError
from ..graph import io
from .losses import LOSSES

logger = logging.getLogger(__name__)
#: below this many steps a rise of the training loss is not blamed on the learning rate
FEW_STEPS = 10

#: samples per group on which a run without held-out samples compares its loss before and after
PROBE = 256
Progress = Callable[[Iterable, str], Iterable]


@dataclass
class Target:
    """What one zipped output is tuned towards on a group's samples: labels or the original's outputs."""

    output: str  # the zipped model's output name
    values: np.ndarray | None  # (N, ...): integer labels, or the original model's output (None: drawn with the batch)
    loss: str  # a name in :data:`onnxzip.tune.losses.LOSSES`
    scale: float = 1.0  # the target's variance where the loss divides by it


@dataclass
class Samples:
    """Samples run together through the zipped model: its feeds by input name, (N, ...) each, and
    the targets they are tuned towards (the inputs it lacks get zeros)."""

    feeds: dict[str, np.ndarray]
    targets: list[Target]

    @property
    def n(self) -> int:
        return int(next(iter(self.feeds.values())).shape[0])

    def batch(self, idx: np.ndarray) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """The feeds and the target values of the samples ``idx``."""
        return {k: v[idx] for k, v in self.feeds.items()}, [t.values[idx] for t in self.targets]

    def draw(self, rng: np.random.Generator, size: int) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """A random training batch of ``size`` samples (with replacement only when there are fewer)."""
        return self.batch(rng.choice(self.n, size=size, replace=self.n < size))


@dataclass(frozen=True)
class Schedule:
    """How long and how fast: Adam steps, learning rate, samples per group and step, the seed of the
    batches; held-out samples are scored every ``every`` steps (0: about 20 times in all) and the
    loop stops after ``patience`` scores without improvement."""

    steps: int
    lr: float = 1e-3
    batch: int = 32
    seed: int = 0
    every: int = 0
    patience: int = 4


@dataclass
class TrainLog:
    """What a tuning run did: steps run, the step whose values were kept, the held-out loss before
    and after (None without held-out samples), seconds."""

    steps_run: int
    best_step: int
    held_before: float | None
    held_after: float | None
    seconds: float


#: op -> the input slots that are not tuned: onnx-ad has no gradient there (a ConvTranspose's weight),
#: they are sizes, not weights (a Resize's roi and scales), or statistics (a kept BatchNorm's mean and
#: variance: Adam's steps of one size for all would swamp a small variance): they stay as they are
FROZEN = {"ConvTranspose": (1,), "Resize": (1, 2), "Upsample": (1,), "BatchNormalization": (3, 4)}


def frozen_slots(node: onnx.NodeProto) -> tuple[int, ...]:
    """The input slots of ``node`` that are not tuned: :data:`FROZEN`, and a grouped Conv's weight
    (onnx-ad has no gradient for it; depthwise filters stay as the zip made them)."""
    if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute):
        return (1,)
    return FROZEN.get(node.op_type, ())


#: op -> the input slots that take sizes, indices or counts, not values
SIZES = {"Reshape": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4),
         "Pad": (1, 2, 3), "ConstantOfShape": (0,), "Range": (0, 1, 2), "TopK": (1,), "OneHot": (1,)}
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def size_sources(model: onnx.ModelProto) -> set[str]:
    """The tensors whose values reach a size (:data:`SIZES`) or a Cast to an integer: a float constant
    there is a shape in disguise, and a step of 1e-6 can flip what it computes. Found in one sweep
    back from those slots; a Shape reads only its input's shape and stops the sweep."""
    marked: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "Cast" and not any(a.name == "to" and a.i in _FLOATS for a in node.attribute):
            marked.add(node.input[0])
        marked.update(node.input[s] for s in SIZES.get(node.op_type, ()) if s < len(node.input))
    for node in reversed(model.graph.node):
        if node.op_type not in ("Shape", "Size") and any(o in marked for o in node.output):
            marked.update(i for i in node.input if i)
    return marked


def parameters(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The initializers a tuning run changes: float tensors of more than one element (a single number
    is a constant of an activation, an epsilon or a scale, not a weight), but those that an op reads
    where they are not tuned (:data:`FROZEN`) and those that reach a size (:func:`size_sources`)."""
    frozen = {n.input[s] for n in model.graph.node for s in frozen_slots(n) if s < len(n.input)} | size_sources(model)
    return [i for i in model.graph.initializer
            if i.data_type == onnx.TensorProto.FLOAT and int(np.prod(i.dims)) > 1 and i.name not in frozen]


def static_batch(model: onnx.ModelProto) -> int | None:
    """The batch size the model's inputs fix, if they do."""
    dims = [i.type.tensor_type.shape.dim for i in model.graph.input if i.type.tensor_type.shape.dim]
    fixed = {d[0].dim_value for d in dims if d[0].HasField("dim_value") and d[0].dim_value > 0}
    return fixed.pop() if len(fixed) == 1 else None


def forward_model(model: onnx.ModelProto, batch: int, example: dict[str, np.ndarray] | None = None
                  ) -> onnx.ModelProto:
    """``model`` with its :func:`parameters` as graph inputs, every other input at batch ``batch``
    and its other sizes those of ``example`` (inputs by name, (n, ...)), 1 where open and not given."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    params = parameters(m)
    names = {p.name for p in params}
    for p in params:
        m.graph.input.append(helper.make_tensor_value_info(p.name, p.data_type, list(p.dims)))
    keep = [i for i in m.graph.initializer if i.name not in names]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    example = example or {}
    for inp in m.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if inp.name in names or not dims:
            continue
        sizes = [batch] + (list(example[inp.name].shape[1:]) if inp.name in example else
                           [d.dim_value if d.HasField("dim_value") else 1 for d in dims[1:]])
        for d, size in zip(dims, sizes):
            d.dim_value = int(size)
    del m.graph.value_info[:]
    values = {p.name: numpy_helper.to_array(p) for p in params}
    values.update({k: np.resize(v, (batch,) + v.shape[1:]) for k, v in example.items()})
    return static_shapes(io.infer_shapes(m), values)


def static_shapes(m: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Every node output's shape declared (onnx-ad needs them to undo broadcasting before opset 13):
    those shape inference leaves open (sizes computed at run time, e.g. a Resize's) are read off one
    run at the model's fixed batch (``values`` for the inputs they name, zeros for the others)."""
    known = {vi.name: vi.type.tensor_type for vi in list(m.graph.value_info) + list(m.graph.output)}
    open_ = [t for n in m.graph.node for t in n.output if t and (
        t not in known or not known[t].HasField("shape") or not all(d.HasField("dim_value") for d in known[t].shape.dim))]
    if not open_:
        return m
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in open_)
    sess = runtime.session(probe, "cpu", built=True)
    feeds = {i.name: values[i.name] if i.name in values else
             runtime.zeros(i) for i in sess.get_inputs()}
    got = sess.run(open_, feeds)
    del probe, sess
    values = {vi.name: vi for vi in m.graph.value_info}
    for name, y in zip(open_, got):
        info = helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.asarray(y).dtype), list(np.shape(y)))
        if name in values:
            values[name].CopyFrom(info)
        elif name not in {o.name for o in m.graph.output}:
            m.graph.value_info.append(info)
    return m


def training_model(model: onnx.ModelProto, batch: int, example: dict[str, np.ndarray] | None = None
                   ) -> tuple[onnx.ModelProto, list[str], dict[str, str]]:
    """The reverse-mode model of ``model`` w.r.t. its :func:`parameters`, at a fixed batch (and the
    sizes of ``example``, :func:`forward_model`).

    Returns:
        the model, the parameter names, parameter -> its gradient output.
    """
    m = forward_model(model, batch, example)
    names = [p.name for p in parameters(model)]
    outputs = [o.name for o in m.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    try:
        reverse = autodiff.reverse(m, names, outputs)
    except autodiff.Unsupported as exc:
        raise UsageError(f"the zipped model cannot be tuned: onnx-ad has no gradient for it ({exc})") from None
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    autodiff.spell_required_inputs(reverse, opset)  # (onnx-ad's Resize probes, before opset 13)
    grads = {n: autodiff.adjoint(n) for n in names}
    missing = [g for g in grads.values() if g not in {o.name for o in reverse.graph.output}]
    if missing:
        raise UsageError(f"onnx-ad gave no gradient output {missing[0]!r}")
    return reverse, names, grads


class Trainer:
    """One model's tuning sessions (forward and reverse, at one batch) and its parameter values."""

    def __init__(self, model: onnx.ModelProto, batch: int, device: str,
                 example: dict[str, np.ndarray] | None = None) -> None:
        self.model = model
        self.batch = static_batch(model) or batch
        reverse, self.names, self.grads = training_model(model, self.batch, example)
        self.reverse = runtime.session(reverse, device, built=True)
        self.forward = runtime.session(forward_model(model, self.batch, example), device, built=True)
        self.values = {p.name: numpy_helper.to_array(p).astype(np.float32) for p in parameters(model)}
        self.inputs = {i.name: i for i in self.reverse.get_inputs() if i.name not in self.values}
        self.forward_inputs = {i.name: i for i in self.forward.get_inputs() if i.name not in self.values}

    def feeds(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The forward feeds of one batch of inputs: the values, the inputs, zeros for the rest."""
        out = dict(self.values)
        for name, spec in self.forward_inputs.items():
            out[name] = batch[name] if name in batch else runtime.zeros(spec, self.batch)
        return out

    def gradient(self, targets: list[Target], batch: dict[str, np.ndarray], values: list[np.ndarray]
                 ) -> tuple[float, dict[str, np.ndarray]]:
        """The summed loss of ``targets`` (their ``values`` on this batch of inputs) and its parameter
        gradients."""
        feeds = self.feeds(batch)
        outs = self.forward.run([t.output for t in targets], feeds)
        loss, seeds = 0.0, {}
        for t, out, want in zip(targets, outs, values):
            value, grad = LOSSES.get(t.loss).grad(out, want, t.scale)
            loss += value
            seeds[autodiff.adjoint(t.output)] = grad[..., None]
        for name, spec in self.inputs.items():
            if autodiff.is_adjoint(name) and name not in seeds:
                seeds[name] = runtime.zeros(spec, self.batch)
        got = self.reverse.run([self.grads[n] for n in self.names], {**feeds, **seeds})
        return loss, {n: g[..., 0] for n, g in zip(self.names, got)}

    def loss(self, groups: list[Samples]) -> float:
        """The summed mean loss of every group's targets over all its samples (forward only)."""
        total = 0.0
        for samples in groups:
            n = samples.n
            for start in range(0, n, self.batch):
                real = min(self.batch, n - start)
                idx = np.resize(np.arange(start, start + real), self.batch)  # the last batch wraps around
                batch, values = samples.batch(idx)
                outs = self.forward.run([t.output for t in samples.targets], self.feeds(batch))
                for t, out, want in zip(samples.targets, outs, values):
                    total += LOSSES.get(t.loss).grad(out[:real], want[:real], t.scale)[0] * real / n
        return total

    def tuned(self) -> onnx.ModelProto:
        """The model with the current values."""
        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        for init in out.graph.initializer:
            if init.name in self.values:
                init.CopyFrom(numpy_helper.from_array(self.values[init.name].astype(np.float32), init.name))
        return out


def train(model: onnx.ModelProto, fit: list[Samples], held: list[Samples], schedule: Schedule, device: str = "cpu",
          progress: Progress = lambda it, d: it, what: str = "tuning") -> tuple[onnx.ModelProto, TrainLog]:
    """Adam on the summed losses of ``fit``'s groups; early stop on ``held`` (may be empty).

    Returns:
        the model with the values kept (the best on ``held``, else the last), and what was done.
    """
    start = time.perf_counter()
    example = {k: v[:1] for samples in fit + held for k, v in samples.feeds.items()}  # (the inputs' sizes)
    largest = max([s.n for s in fit + held] or [1])
    if schedule.batch > largest:
        logger.info("batch %d is more than the %d samples there are: batches of %d", schedule.batch, largest, largest)
    trainer = Trainer(model, min(schedule.batch, largest), device, example)  # (a batch past the data: only memory)
    values = trainer.values
    m1 = {n: np.zeros_like(v) for n, v in values.items()}
    m2 = {n: np.zeros_like(v) for n, v in values.items()}
    rng = np.random.default_rng(schedule.seed)
    every = schedule.every or max(1, schedule.steps // 20)
    scale = {n: step_scale(v) for n, v in values.items()}
    before = best = trainer.loss(held) if held else None
    kept, best_step, waited, step = dict(values), 0, 0, 0
    # without held-out samples, the loss on some fitted ones before and after (said where it rose)
    spread = [np.linspace(0, g.n - 1, min(g.n, PROBE)).round().astype(int) for g in fit]  # (not the first: sorted data)
    probe = [Samples({k: v[i] for k, v in g.feeds.items()}, [Target(t.output, t.values[i], t.loss, t.scale)
                                                            for t in g.targets]) for g, i in zip(fit, spread)] \
        if not held and all(t.values is not None for g in fit for t in g.targets) else []
    fit_before = trainer.loss(probe) if probe else None
    for step in progress(range(1, schedule.steps + 1), what):
        total = {n: np.zeros_like(v) for n, v in values.items()}
        for samples in fit:
            for n, g in trainer.gradient(samples.targets, *samples.draw(rng, trainer.batch))[1].items():
                total[n] += g
        with np.errstate(over="ignore", invalid="ignore"):  # (a divergence is said below, in one line)
            for n in trainer.names:  # Adam
                m1[n] = 0.9 * m1[n] + 0.1 * total[n]
                m2[n] = 0.999 * m2[n] + 0.001 * total[n] ** 2
                values[n] = values[n] - schedule.lr * scale[n] * (m1[n] / (1 - 0.9 ** step)) / (
                    np.sqrt(m2[n] / (1 - 0.999 ** step)) + 1e-8)
        if not all(np.isfinite(values[n]).all() for n in trainer.names):
            raise UsageError(f"{what} diverged at step {step} (weights overflowed at the learning rate "
                             f"{schedule.lr:g}; finetune takes a lower --lr)")
        if held and (step % every == 0 or step == schedule.steps):
            score = trainer.loss(held)
            if score < best * (1 - 1e-4):
                best, kept, best_step, waited = score, dict(values), step, 0
            else:
                waited += 1
                if waited >= schedule.patience:
                    break
    if held:
        trainer.values = kept
    else:
        best_step = step
        fit_after = trainer.loss(probe) if probe else None
        if probe and fit_after > fit_before:
            why = f"too high a learning rate, {schedule.lr:g}?" if step >= FEW_STEPS else \
                f"over only {step} steps, random batches can raise it; more --steps, or a lower --lr"
            logger.warning("%s: the training loss on %d fitted samples rose from %.4g to %.4g over %d steps (%s); "
                           "the model written may be worse than the one given", what, sum(g.n for g in probe),
                           fit_before, fit_after, step, why)
    log = TrainLog(step, best_step, before, best, round(time.perf_counter() - start, 3))
    return trainer.tuned(), log


#: a tensor whose root mean square is below this takes Adam steps shrunk in proportion (Adam moves
#: every value by about the step size whatever its scale: a folded conv of weights near 1e-5, as in
#: PaddleOCR's detectors, was thrown off by steps of 1e-6)
STEP_REFERENCE = 1e-2


def step_scale(value: np.ndarray) -> float:
    """The factor on a tensor's Adam steps: 1, or its RMS over :data:`STEP_REFERENCE` where smaller
    (1 for an all-zero tensor, which has no scale of its own)."""
    rms = float(np.sqrt(np.mean(np.square(value, dtype=np.float64))))
    return 1.0 if rms == 0.0 else min(1.0, rms / STEP_REFERENCE)
