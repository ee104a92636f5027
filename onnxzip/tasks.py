"""The tasks of a zip: models and calibration data loaded, checked, normalized and aligned, and
the original files' outputs on the data (the same for every zip a budget makes)."""
from __future__ import annotations

import itertools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import images, timing
from .calibrate import runtime
from .check.fidelity import file_parameters
from .check.heads import prove_heads
from .errors import InputError, UsageError
from .graph import io
from .graph.align import align
from .graph.ir import ModelIR, batch_within, build_ir, same_inputs
from .graph.lint import MAX_OPSET
from .graph.normalize import onnx_opset
from .images import ImageRecipe
from .options import ZipOptions
from .sharing.layout import group_name
from .sharing.match import COSTS
from .sharing.plan import check_share_list, counts_given
from .stamp import weights_sha256

log = logging.getLogger(__name__)
MIN_HOLD_OUT = 10  # smaller calibration sets hold nothing out (their verdicts are "too few to judge")
SPLIT_SEED = 0

Models = Sequence["str | os.PathLike | onnx.ModelProto"]
Data = Sequence["str | os.PathLike | dict[str, np.ndarray]"]


@dataclass
class Tasks:
    """Everything a zip reads of its inputs."""

    names: list[str]
    irs: list[ModelIR]  # normalized and aligned
    arrays: list[dict[str, np.ndarray]]  # per task, the calibration inputs the zip is fitted to, by input name
    labels: list[np.ndarray | None]  # per task, class labels (``--labels``) or None
    references: list[dict[str, Any]]  # per task, the original file's outputs on ``arrays``
    shared_inputs: bool  # one input for all tasks in the zipped model
    held: list[dict[str, np.ndarray]]  # per task, the held-out calibration inputs (:func:`split`; may be empty)
    held_references: list[dict[str, Any]]  # per task, the original file's outputs on ``held``
    #: the original files, with the calibration data's sizes (for ``--distill``, where they teach,
    #: and where they leave sizes open, to be run again at another size)
    protos: Originals | None = None

    @property
    def held_out(self) -> bool:
        """Whether every task has held-out samples to be judged on."""
        return all(_count(h) for h in self.held)


def prepare(models: Models, data: Data, opts: ZipOptions) -> Tasks:
    """Check the arguments, load and align the tasks, and run the original files once."""
    if len(models) < 2:
        raise UsageError("give at least two models")
    if len(data) == 1:  # one for all
        data = list(data) * len(models)
    if len(data) != len(models):
        raise UsageError(f"give one calibration file per model, or one for all: {len(models)} models, "
                         f"{len(data)} data files")
    opts.check(len(models))
    names = task_names(models, opts.names)
    with timing.phase("load"):
        protos, irs, arrays = load_tasks(models, names, data, (opts.labels,) if opts.labels else (), opts.recipe())
    for i, j in itertools.combinations(range(len(irs)), 2):
        if irs[i].weights_sha256 and irs[i].weights_sha256 == irs[j].weights_sha256:
            log.warning("tasks %r and %r are the same model (the same weights, %s and %s); was another model meant?",
                        names[i], names[j], irs[i].source, irs[j].source)
    labels = [None if not opts.labels else io.check_labels(a.pop(opts.labels), classes(ir), _source(d, n), _count(a))
              for a, ir, d, n in zip(arrays, irs, data, names)]
    for a, d, n in zip(arrays, data, names):  # (the labels popped: inputs only)
        floats = [v for v in a.values() if v.dtype.kind == "f" and v.ndim]
        if _count(a) > 1 and floats and all(np.all(v == v[:1]) for v in floats):
            log.warning("%s: all %d calibration samples are the same: the statistics and the verdicts see one input",
                        _source(d, n), _count(a))
    splits = []
    for t, ir in enumerate(irs):
        arrays[t], labels[t] = whole_batches(ir, arrays[t], labels[t])
        splits.append(split(_count(arrays[t]), opts.hold_out, batch_unit(ir)))
    if not all(len(out) for _, out in splits):  # one task without: every task is fitted to all (no verdicts)
        splits = [(np.arange(_count(a)), np.arange(0)) for a in arrays]
    held = []
    for t, (fit, out) in enumerate(splits):
        held.append(_take(arrays[t], out) if len(out) else {})
        arrays[t], labels[t] = _take(arrays[t], fit), None if labels[t] is None else labels[t][fit]
    if opts.finetune and any(y is None for y in labels):
        raise UsageError("--finetune needs labels: give --labels KEY, the key of the labels in every --data file")
    with timing.phase("load"):
        irs = align(irs)
    if not counts_given(opts.share):  # (before any statistics: a --share list of the wrong length)
        check_share_list(opts.share, [group_name(irs[0], g) for g in irs[0].spaces.groups])
    if COSTS.get(opts.cost).same_samples:  # (correlations need the same samples through every task)
        if any(set(a) != set(arrays[0]) or any(a[k].shape[1:] != arrays[0][k].shape[1:] for k in a) for a in arrays):
            raise UsageError(f"--cost {opts.cost} needs tasks with the same inputs")
        arrays = [{k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}] * len(arrays)
        if all(held):
            held = [{k: np.concatenate([a[k] for a in held]) for k in held[0]}] * len(held)
    shared_inputs = not opts.separate_inputs and same_inputs(irs)
    with timing.phase("originals"):
        references = reference_outputs(protos, irs, arrays, opts)
        held_references = reference_outputs(protos, irs, held, opts) if all(held) else [{} for _ in held]
    with timing.phase("load"):
        irs = prove_heads(irs, arrays, opts.device)  # (after the originals: they say what is wrong with the data)
    if opts.hold_out and not all(held):
        log.warning("too few calibration samples to hold any out (fewer than %d, or than two whole batches of a "
                    "model with a fixed batch; or --hold-out %g would leave none to fit to): every task is fitted "
                    "to all of its samples, and a verdict of 'ok' on them is said as 'too few to judge'",
                    MIN_HOLD_OUT, opts.hold_out)
    dynamic = any(ir.open_sizes() for ir in irs)  # (the originals run again at another size: kept)
    return Tasks(names, irs, arrays, labels, references, shared_inputs, held, held_references,
                 Originals(models, protos, arrays) if opts.distill or dynamic else None)


class Originals(Sequence[onnx.ModelProto]):
    """The original models with the calibration data's sizes, as :func:`load_tasks` made them: a
    model given as a file is read again from it when asked (not held through the zip: 0.87 GB for
    the BERT-base pair), one given as a proto is kept."""

    def __init__(self, models: Models, protos: list[onnx.ModelProto], arrays: list[dict[str, np.ndarray]]):
        self._kept = [None if isinstance(m, (str, os.PathLike)) else p for m, p in zip(models, protos)]
        self._paths = [m if isinstance(m, (str, os.PathLike)) else None for m in models]
        self._sizes = [{k: v[:1] for k, v in a.items()} for a in arrays]  # (what fixes the sizes)

    def __len__(self) -> int:
        return len(self._kept)

    def __getitem__(self, t):  # type: ignore[override]
        if isinstance(t, slice):
            return [self[i] for i in range(len(self))[t]]
        kept = self._kept[t]
        return kept if kept is not None else io.fix_dynamic_dims(io.load_model(self._paths[t]), self._sizes[t])



def split(n: int, fraction: float, unit: int = 1, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(fitted, held-out) sample indices, each sorted: a seeded ``fraction`` of ``n`` samples held
    out (``--hold-out``), a multiple of ``unit`` (a model's whole batches, :func:`batch_unit`), none
    when ``fraction`` is 0, ``n < MIN_HOLD_OUT`` or nothing would be left to fit. The same ``n``
    always splits the same way."""
    count = max(1, round(fraction * n / unit)) * unit
    if not fraction or n < MIN_HOLD_OUT or count >= n:
        return np.arange(n), np.arange(0)
    held = np.sort(np.random.default_rng(seed).permutation(n)[:count])
    return np.setdiff1d(np.arange(n), held), held


def _take(arrays: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in arrays.items()}


def _count(arrays: dict[str, np.ndarray]) -> int:
    return int(next(iter(arrays.values())).shape[0]) if arrays else 0


def task_names(models: Sequence[Any], given: Sequence[str] | None) -> list[str]:
    """The tasks' names: as given, else the models' file stems (made unique)."""
    if given:
        return list(given)
    names = []
    for i, m in enumerate(models):
        stem = re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(m).stem) if isinstance(m, (str, os.PathLike)) else f"task{i}"
        names.append(stem if stem not in names else f"{stem}_{i}")
    return names


def load_tasks(models: Sequence[str | os.PathLike | onnx.ModelProto], names: list[str],
               data: Sequence[str | os.PathLike | dict[str, np.ndarray]] | None = None,
               extra_keys: tuple[str, ...] = (), recipe: ImageRecipe | None = None
               ) -> tuple[list[onnx.ModelProto], list[ModelIR], list[dict[str, np.ndarray]]]:
    """Load the models and their calibration data, and normalize the models (not yet aligned),
    all converted to one opset. Dynamic float input dims other than the batch are fixed to the
    calibration data's sizes (:func:`io.fix_dynamic_dims`). A folder in ``data`` is read as images
    with ``recipe`` (:mod:`onnxzip.images`)."""
    protos = [io.load_model(m) if isinstance(m, (str, os.PathLike)) else m for m in models]
    sources = [str(m) if isinstance(m, (str, os.PathLike)) else n for m, n in zip(models, names)]
    for proto, source in zip(protos, sources):
        if proto.producer_name == "onnxzip":
            raise InputError(f"{source}: a model onnxzip zipped (outputs <task>/<name>); give the original models "
                             "(onnxzip bench, eval, distill and finetune take a zipped one)")
    arrays = []
    for i, d in enumerate(data or []):
        specs = io.input_specs(protos[i])
        if images.is_image_folder(d):
            if extra_keys:
                raise UsageError(f"{d}: an image folder has no labels (--labels needs .npz files)")
            arrays.append(io.check_calibration(images.load_folder(d, specs, recipe or ImageRecipe()), specs, str(d)))
        elif isinstance(d, (str, os.PathLike)):
            arrays.append(io.load_calibration(d, specs, extra_keys))
        else:
            arrays.append(io.check_calibration(dict(d), specs, f"calibration data of task {names[i]!r}", extra_keys))
    for proto, source in zip(protos, sources):
        io.check_finite_weights(proto, source)
    declared = [io.declared_dims(p) for p in protos]
    sizes = [file_parameters(p) for p in protos]
    fingerprints = [weights_sha256(p) for p in protos]
    for i, a in enumerate(arrays):
        protos[i] = io.fix_dynamic_dims(protos[i], a)
    opset = min(max(onnx_opset(p) for p in protos), MAX_OPSET)
    irs = [build_ir(p, n, s, opset) for p, n, s in zip(protos, names, sources)]
    for ir, d, f, n in zip(irs, declared, fingerprints, sizes):
        ir.declared_inputs, ir.weights_sha256, ir.file_params = d, f, n
    for ir, a in zip(irs, arrays):
        ir.sample_dims = {k: tuple(v.shape[1:]) for k, v in a.items()}
    return protos, irs, arrays


def classes(ir: ModelIR) -> int | None:
    """The class count of a task's first output of class scores (N, C > 1); 2 for one score per
    sample (N,) or (N, 1); None where neither."""
    shapes = [t.shape for t in ir.graph.outputs if t.shape is not None]
    c = next((s[1] for s in shapes if len(s) == 2 and isinstance(s[1], int) and s[1] > 1), None)
    return c if c is not None else 2 if any(len(s) == 1 or (len(s) == 2 and s[1] == 1) for s in shapes) else None


def _source(data: object, name: str) -> str:
    return f"{data} (task {name!r})" if isinstance(data, (str, os.PathLike)) else f"calibration data of task {name!r}"


def whole_batches(ir: ModelIR, arrays: dict[str, np.ndarray], labels: np.ndarray | None
                  ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """A model that fixes its batch size B > 1 and holds tensors without the batch on axis 0 (token
    rows, sequence-first layouts) gets whole batches: the calibration samples past the last multiple
    of B are left out (with fewer than B, they are repeated up to B), because its stages cannot pad a
    partial batch. Batch-major models keep every sample (each stage pads its last batch)."""
    fixed = batch_unit(ir)
    n = next(iter(arrays.values())).shape[0]
    if n % fixed == 0:
        return arrays, labels
    m = n - n % fixed if n > fixed else fixed
    log.warning("task %r: the model fixes its batch at %d: %s", ir.name, fixed,
                f"{n - m} of its {n} calibration samples are left out" if m < n else f"its {n} samples repeat to {m}")
    return ({k: np.resize(v, (m,) + v.shape[1:]) for k, v in arrays.items()},
            None if labels is None else np.resize(labels, m))


def batch_unit(ir: ModelIR) -> int:
    """The samples a model must run in one go: its fixed batch B > 1 where it holds tensors without
    the batch on axis 0 (token rows, sequence-first layouts), else 1."""
    fixed = ir.fixed_batch
    if fixed is None or fixed <= 1:
        return 1
    if all(t.shape[0] == fixed for t in ir.graph.tensors().values()
           if not isinstance(t, gs.Constant) and t.shape and t.dtype is not None and np.dtype(t.dtype).kind == "f"):
        return 1
    return fixed


def reference_outputs(protos: list[onnx.ModelProto], irs: list[ModelIR], data: list[dict[str, np.ndarray]],
                      opts: ZipOptions) -> list[dict[str, Any]]:
    """Per task, on its calibration data: the original file's outputs (the same for every zip)."""
    sizes = [", ".join(f"{k} {tuple(v.shape[1:])}" for k, v in arrays.items()) for arrays in data]
    try:
        return [runtime.run(runtime.session(proto, opts.device, what=f"{ir.source} (inputs fixed to the "
                                                                     f"calibration samples' sizes: {size})"),
                            arrays, ir.outputs, batch_within(ir, opts.batch_size, runtime.RUN_BYTES), ir.source)
                for proto, ir, arrays, size in zip(protos, irs, data, sizes)]
    finally:
        timing.release_memory(collect=True)  # (the sessions' copies of the weights)
