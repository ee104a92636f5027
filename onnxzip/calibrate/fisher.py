"""Loss-gradient statistics through ONNX Runtime: how much each neuron matters to its task's loss.

For every zipped layer, a zero "delta" input is added to its output z (z + delta) on a fixed-batch
copy of the task's network, and ``onnx-ad`` builds the reverse-mode graph (plain ONNX, run by plain
ONNX Runtime) that gives dL/delta = dL/dz. Without labels the loss is

* for a classifier output (N, C): cross-entropy against labels sampled from the model's own
  softmax (the true Fisher; probabilities, rows summing to 1, are used as they are);
* for any other float output: a random projection v.y, v ~ N(0, I) (Gauss-Newton); for an output
  made by a Sigmoid (detector scores, probability maps), the projection of its logit, which does
  not saturate.

The statistic per output neuron is E_samples[sum over positions (dL/dz)^2] (float64): the
Gauss-Newton weight that turns a neuron's mean squared pre-activation error into loss units.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from ..errors import InternalError, UsageError
from ..graph import io
from ..graph.ir import ModelIR, activation_bytes
from ..graph.spaces import LAYER_AXIS
from ..timing import phase, release_memory
from . import autodiff, runtime

log = logging.getLogger(__name__)


def gradient_model(ir: ModelIR, layers: list[int], batch: int, sample: dict[str, np.ndarray] | None = None
                   ) -> tuple[onnx.ModelProto, dict[int, str], list[str]]:
    """The task's network at a fixed batch, with a delta input on each layer's output, reversed.

    ``sample``: one batch of inputs, run once where shape inference leaves a layer output's shape
    open (token-major layers behind run-time Reshapes): the delta inputs need static shapes.

    Returns:
        the reverse model, layer -> the name of its gradient output, and the seeded outputs.
    """
    model = ir.to_onnx()
    for inp in model.graph.input:
        if inp.type.tensor_type.shape.dim:
            inp.type.tensor_type.shape.dim[0].dim_value = batch
    weights = autodiff.weights_as_inputs(model)  # (shape inference and onnx-ad never copy the weights' data)
    model = io.infer_shapes(model)
    shapes = {vi.name: vi.type.tensor_type for vi in list(model.graph.value_info) + list(model.graph.output)}
    outs = [ir.layers[i].output for i in layers]
    open_dims = [o for o in outs if not all(d.HasField("dim_value") for d in shapes[o].shape.dim)]
    if open_dims and sample is not None:
        probe = ir.to_onnx()
        probe.graph.output.extend(helper.make_empty_tensor_value_info(o) for o in open_dims)
        got = runtime.session(probe, "cpu", built=True).run(open_dims, sample)
        for o, y in zip(open_dims, got):
            shapes[o] = helper.make_tensor_type_proto(shapes[o].elem_type, list(y.shape)).tensor_type
    graph = model.graph
    deltas = {}
    for i in layers:
        out = ir.layers[i].output
        delta = f"onnxzip.delta/{ir.layers[i].name}"
        vi = helper.make_value_info(delta, onnx.TypeProto(tensor_type=shapes[out]))
        graph.input.append(vi)
        for node in graph.node:
            node.output[:] = [f"{out}.onnxzip_pre" if o == out else o for o in node.output]
        graph.node.append(helper.make_node("Add", [f"{out}.onnxzip_pre", delta], [out]))
        deltas[i] = delta
    g = gs.import_onnx(model)
    g.toposort()
    model = ir.export(g)
    seeded = [o.name for o in model.graph.output
              if o.type.HasField("tensor_type") and o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    seeded = _seed_logits(model, seeded, shapes)
    if not seeded:
        raise UsageError(f"{ir.source}: no float output to take loss gradients from")
    reverse = autodiff.reverse_for_one_seed(model, list(deltas.values()), seeded, ir.opset, weights)
    grads = {}
    names = [o.name for o in reverse.graph.output]
    for i, delta in deltas.items():
        grads[i] = next(n for n in names if n.endswith(delta) and n != delta)
    return reverse, grads, seeded


def _seed(y: np.ndarray, rng: np.random.Generator, labels: np.ndarray | None = None) -> np.ndarray:
    """dL/dy for one output batch: cross-entropy for classifiers, against the given labels (the
    empirical Fisher) or labels sampled from the model's own softmax (the true Fisher); else a
    random projection."""
    y = np.asarray(y, np.float64)
    if y.ndim == 2 and y.shape[1] > 1:
        is_prob = np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3)
        p = y if is_prob else np.exp(y - y.max(axis=1, keepdims=True))
        p = p / p.sum(axis=1, keepdims=True)
        if labels is None or labels.max() >= p.shape[1]:
            labels = np.array([rng.choice(p.shape[1], p=row) for row in p])
        onehot = np.eye(p.shape[1])[labels]
        return -onehot / np.maximum(y, 1e-12) if is_prob else p - onehot
    return rng.normal(size=y.shape)


def _seed_logits(model: onnx.ModelProto, seeded: list[str], shapes: dict[str, onnx.TypeProto.Tensor]) -> list[str]:
    """Outputs made by a Sigmoid are seeded at its input, the logit, made a graph output here.

    A detector's score is 0 or 1 on almost every calibration sample: its gradients vanish there, and
    every neuron would look free to share, although a shift of the logit flips decisions. The
    Gauss-Newton statistic of the logit does not saturate.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for name in seeded:
        node = producer.get(name)
        if node is not None and node.op_type == "Sigmoid" and node.domain in ("", "ai.onnx"):
            logit = node.input[0]
            if logit not in shapes:
                out.append(name)  # its shape is not known: seeded as it is
                continue
            if logit not in {o.name for o in model.graph.output}:
                model.graph.output.append(helper.make_value_info(logit, onnx.TypeProto(tensor_type=shapes[logit])))
            name = logit
        if name not in out:
            out.append(name)
    return out


#: the reverse pass reads at most this many bytes of forward activations in all (a large model's
#: statistic comes from fewer samples) and this many per batch (its memory)
FISHER_BYTES = 2 << 30
FISHER_BATCH_BYTES = 256 << 20


def fisher_sizes(ir: ModelIR, samples: int, batch: int, per_sample: int | None = None) -> tuple[int, int]:
    """(samples, batch) for the reverse pass within ``FISHER_BYTES`` and ``FISHER_BATCH_BYTES``, the
    batch no larger than the samples. ``per_sample``: one sample's activation bytes, measured (shape
    inference leaves a transformer's run-time shapes open and counts too few)."""
    size = max(activation_bytes(ir), per_sample or 0, 1)
    n = min(samples, max(16, FISHER_BYTES // size))
    return n, max(1, min(n, batch, FISHER_BATCH_BYTES // size))


def sample_bytes(ir: ModelIR, sample: dict[str, np.ndarray], device: str = "cpu") -> int:
    """Bytes of the float tensors one sample makes through the task's network, measured in ONNX
    Runtime (every node output asked for once)."""
    model = ir.to_onnx()
    known = {o.name for o in model.graph.output}
    names = [t.name for n in ir.graph.nodes for t in n.outputs if t.name and t.name not in known]
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    sess = runtime.session(model, device, built=True)
    n = ir.fixed_batch or 1  # (a model that fixes its batch runs at it: the bytes divided by it)
    feeds = {k: np.resize(v[:n], (n,) + v.shape[1:]) for k, v in sample.items()}
    got = runtime.quiet_run(sess, None, feeds, "one sample", built=True)
    return int(sum(x.nbytes for x in got if isinstance(x, np.ndarray) and x.dtype.kind == "f")) // n


def neuron_fisher(ir: ModelIR, data: dict[str, np.ndarray], layers: list[int], *, device: str = "cpu",
                  batch: int = 32, seed: int = 0, labels: np.ndarray | None = None,
                  outputs: dict[str, np.ndarray] | None = None, progress=None) -> dict[int, np.ndarray]:
    """Per layer in ``layers``: (neurons,) float64, E_samples[sum over positions (dL/dz)^2].

    ``labels`` (N,): the calibration samples' class labels, for the empirical Fisher. ``outputs``:
    ``progress(items, what)``: shows the batches go by. ``outputs``:
    the network's outputs on ``data`` when already known (the original file's): where they hold
    every seeded output, the seeds come from them, and each batch runs the reverse graph once
    instead of a forward run first. A large model
    takes its statistic from evenly spaced samples only (:func:`fisher_sizes`; a per-neuron average,
    it needs far fewer samples than the Hessians) and runs in smaller batches."""
    n, batch = fisher_sizes(ir, next(iter(data.values())).shape[0], batch, sample_bytes(ir, data, device))
    batch = ir.fixed_batch or batch
    total = next(iter(data.values())).shape[0]
    pick = np.linspace(0, total - 1, n).round().astype(int) if n < total else slice(None)  # spread, not the first
    data = {k: v[pick] for k, v in data.items()}
    labels = None if labels is None else np.asarray(labels)[pick]
    first = {k: np.resize(v[:batch], (batch,) + v.shape[1:]) for k, v in data.items()}
    reverse, grads, seeded = gradient_model(ir, layers, batch, first)
    known = None
    if outputs is not None and all(isinstance(outputs.get(name), np.ndarray) for name in seeded):
        known = {name: outputs[name][pick] for name in seeded}
    sums = _summed_squares(reverse, grads, ir.opset, {i: _channel_axis(ir, i) for i in grads})
    sess = runtime.session(reverse, device, built=True)
    inputs = {i.name: i for i in sess.get_inputs()}
    rng = np.random.default_rng(seed)
    totals = {i: np.zeros(ir.layers[i].neurons) for i in layers}
    for start in (progress or (lambda it, what: it))(range(0, n, batch), f"loss statistics of task {ir.name}"):
        real = min(batch, n - start)
        feeds = {}
        for name, x in data.items():
            chunk = x[start:start + batch]
            if real < batch:  # pad the last batch with repeats of its own samples (finite wherever the real
                chunk = np.resize(chunk, (batch,) + chunk.shape[1:])  # ones are); their seeds are zero
            feeds[name] = chunk
        for name, spec in inputs.items():
            if name not in feeds:
                shape = [batch if d is None or isinstance(d, str) else d for d in spec.shape]
                if autodiff.is_adjoint(name):
                    shape[-1] = 1  # one seed direction
                feeds[name] = np.zeros(shape, np.float32)
        if known is None:
            values = sess.run(seeded, feeds)
        else:
            values = [np.resize(known[name][start:start + batch], (batch,) + known[name].shape[1:]) for name in seeded]
        for name, y in zip(seeded, values):
            lab = None if labels is None else np.resize(labels[start:start + batch], batch)
            s = _seed(y, rng, lab) if name in ir.outputs else rng.normal(size=y.shape)  # logits: projected
            s[real:] = 0.0
            feeds[autodiff.adjoint(name)] = s[..., None].astype(np.float32)
        got = sess.run([sums[i] for i in layers], feeds)
        for i, g in zip(layers, got):  # (padded samples, repeats of real ones, have zero seeds: zero gradients)
            totals[i] += np.asarray(g, np.float64)
    del sess
    release_memory()  # (the reverse graph's session: gigabytes on a transformer, not kept resident)
    return {i: t / n for i, t in totals.items()}


def _channel_axis(ir: ModelIR, li: int) -> int:
    """The axis of layer ``li``'s output that holds its neurons (an embedding's: the last)."""
    space = ir.spaces.layout.get(ir.layers[li].output)
    return space.axis if space is not None else LAYER_AXIS


def _summed_squares(reverse: onnx.ModelProto, grads: dict[int, str], opset: int,
                    channel_axes: dict[int, int] | None = None) -> dict[int, str]:
    """Each layer's gradient output of ``reverse`` (B, C, ..., 1) replaced, in place, by its sum of
    squares per channel (C,): only the statistic leaves ONNX Runtime, and each gradient is freed
    as soon as it is summed, not held with every other layer's until the run ends (on a BERT-base
    layer stack, gigabytes). Returns layer -> the sum's output name."""
    graph = reverse.graph
    outputs = {o.name: o for o in graph.output}
    sums = {}
    for i, name in grads.items():
        rank = len(outputs[name].type.tensor_type.shape.dim)
        channel = (channel_axes or {}).get(i, LAYER_AXIS)
        if rank <= channel + 1:  # (a gradient has the batch, the channels and the seed axis at least)
            raise InternalError(f"the gradient {name!r} has no declared rank ({rank}): its channels cannot be summed")
        axes = [a for a in range(rank) if a != channel]
        sums[i] = f"{name}.sum_squares"
        if opset >= 18:
            graph.initializer.append(numpy_helper.from_array(np.asarray(axes, np.int64), f"{sums[i]}.axes"))
            graph.node.append(helper.make_node("ReduceSumSquare", [name, f"{sums[i]}.axes"], [sums[i]], keepdims=0))
        else:
            graph.node.append(helper.make_node("ReduceSumSquare", [name], [sums[i]], axes=axes, keepdims=0))
    kept = [o for o in graph.output if o.name not in set(grads.values())]
    del graph.output[:]
    graph.output.extend(kept + [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in sums.values()])
    return sums


def loss_statistics(irs: list[ModelIR], data: list[dict[str, np.ndarray]], labels: list | None, device: str,
                    outputs: list[dict[str, np.ndarray]] | None = None, progress=None
                    ) -> list[dict[int, np.ndarray]] | None:
    """Per task, every zippable layer's per-neuron loss weights (:mod:`onnxzip.calibrate.fisher`), or None
    (with a warning) where the reverse-mode graph cannot be built. ``outputs``: per task, its
    outputs on its data, when known (:func:`neuron_fisher`)."""
    layers = [i for i in irs[0].hidden if i not in irs[0].spaces.followers]
    try:
        with phase("fisher"):
            return [neuron_fisher(ir, d, layers, device=device, labels=y, outputs=o, progress=progress)
                    for ir, d, y, o in zip(irs, data, labels or [None] * len(irs), outputs or [None] * len(irs))]
    except (UsageError, autodiff.Unsupported) as exc:  # no float output, or onnx-ad lacks a rule for an op
        log.warning("loss-aware statistics unavailable (%s); costs in pre-activation units",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
