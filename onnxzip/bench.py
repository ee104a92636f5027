"""``onnxzip bench``: a zipped model against its originals, side by side, on one execution provider.

Latency: the zipped model's one run (every task's outputs) against the originals run one after
another on the same inputs, the two sides alternating round by round after warm-up rounds;
median and 90th percentile. Memory:
the resident memory that creating the sessions and running them adds to a fresh process that has
imported ONNX Runtime (each side in its own child process, so neither inherits the other's
allocations). Bytes: the
files, external data included.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from queue import Empty

import numpy as np
import onnx

from . import images, stamp
from .calibrate import runtime
from .check.shapes import resized
from .emit.shapes import zipped_input
from .errors import InputError, UsageError
from .graph import io
from .images import ImageRecipe


Say = Callable[[str], None] | None  # told what the bench does now (None: nothing said)
log = logging.getLogger(__name__)


@dataclass
class Side:
    """One side of the comparison: the zipped model, or the originals."""

    median_ms: float
    p90_ms: float
    memory_mb: float
    bytes: int


def open_session(path: str, provider: str):
    """A session with ONNX Runtime's default options on ``provider``; refuses a fall-back."""
    return runtime.session(path, provider, lean=False, what=path)


def file_bytes(path: str) -> int:
    """The model file and the external-data files it names."""
    total = Path(path).stat().st_size
    model = io.load_model(path, external=False)
    seen = set()
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                total += (Path(path).parent / entry.value).stat().st_size
    return total


def open_axes(spec: io.InputSpec) -> list[int]:
    """A float input's sizes past the batch that the model leaves open (an image's height and width)."""
    return [a for a, d in enumerate(spec.shape) if a > 0 and d is None] if spec.dtype.kind == "f" else []


def task_feeds(path: str, data: dict[str, np.ndarray] | None, batch: int, seed: int,
               size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """``batch`` samples for the model at ``path``: the first of ``data``, or random ones where
    no data is given (normal floats, zero integers: token id 0). ``size`` (H, W): each float input's
    two open sizes take it (data resampled, nearest sample); other open sizes need data."""
    specs = io.input_specs(io.load_model(path, external=False))
    grow = {}
    for s in specs if size is not None else []:
        axes = open_axes(s)
        if len(axes) != 2:
            opened = sum(1 for a, d in enumerate(s.shape) if a > 0 and d is None)
            if s.dtype.kind != "f":
                raise UsageError(f"{path}: integer input {s.name!r} has {opened} open size(s) past the batch; --sizes "
                                 "sets an image's height and width (a float input's); a sequence length comes from "
                                 "--data")
            raise UsageError(f"{path}: input {s.name!r} has {opened} open size(s) past the batch; --sizes sets two "
                             "(an image's height and width)")
        grow[s.name] = dict(zip(axes, size))
    if data is not None:
        arrays = io.check_calibration(dict(data), specs, "--data")
        n = next(iter(arrays.values())).shape[0]
        if n < batch:
            log.warning("%s: --data holds %d samples for a batch of %d: they are repeated to fill it", path, n, batch)
        arrays = {k: np.resize(v, (batch,) + v.shape[1:]) if n < batch else v[:batch] for k, v in arrays.items()}
        return {k: resized(v, grow.get(k, {})) for k, v in arrays.items()}
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        dims = [grow.get(s.name, {}).get(a, d) for a, d in enumerate(s.shape)]
        if any(d is None for d in dims[1:]):
            raise InputError(f"{path}: input {s.name!r} has a dynamic dimension besides the batch: give --data "
                             "(or --sizes H,W for an image's height and width)")
        shape = (batch,) + tuple(dims[1:])
        out[s.name] = rng.normal(size=shape).astype(s.dtype) if s.dtype.kind == "f" else np.zeros(shape, s.dtype)
    return out


def bench_data(data: list[str] | None, originals: list[str], recipe: ImageRecipe) -> list[dict[str, np.ndarray]] | None:
    """``--data`` per original (or one for all): ``.npz``/``.npy`` arrays, or an image folder read with
    ``recipe`` for that original's input, as ``onnxzip zip`` reads it."""
    if not data:
        return None
    if len(data) == 1:
        data = data * len(originals)
    if len(data) != len(originals):
        raise UsageError(f"give one --data per original, or one for all: {len(originals)} originals, {len(data)} files")
    recipe.check()
    out = []
    for d, p in zip(data, originals):
        specs = io.input_specs(io.load_model(p, external=False))
        if images.is_image_folder(d):
            out.append(images.load_folder(d, specs, recipe))
            continue
        arrays = io.load_arrays(d)  # (labels, as a test file holds them, are not inputs: left out)
        inputs = {s.name for s in specs}
        arrays = {k: v for k, v in arrays.items() if k in inputs or "label" not in k.lower()}
        out.append(io.check_calibration(arrays, specs, f"{d} (for {p})"))
    return out


def zipped_inputs(path: str, names: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The zipped model's feeds: a shared input takes the first task's array, ``<task>/<input>`` its task's."""
    specs = io.input_specs(io.load_model(path, external=False))
    out = {}
    for s in specs:
        task, name = zipped_input(s.name, names)
        if name in feeds[task]:
            out[s.name] = feeds[task][name]
        else:
            raise InputError(f"{path}: input {s.name!r} matches no input of the originals")
    return out


def task_order(path: str) -> list[str]:
    """The zipped model's tasks, in the order of its outputs ``<task>/<output>``."""
    model = io.load_model(path, external=False)
    names = []
    for o in model.graph.output:
        task = o.name.split("/", 1)[0]
        if "/" in o.name and task not in names:
            names.append(task)
    if not names:
        raise InputError(f"{path}: not a zipped model (no outputs named <task>/<output>)")
    return names


def _timed(sides: list[list], n: int, warmup: int, say: Say = None) -> list[np.ndarray]:
    """Seconds per round of each side over ``n`` rounds, the sides alternating round by round (so
    that the machine's load falls on both alike); a side's round calls each of its functions in turn.
    ``say``: told how long the timed rounds will take (from the warm-up rounds)."""
    started = time.perf_counter()
    for _ in range(warmup):
        for runs in sides:
            for f in runs:
                f()
    if say is not None:
        per_round = (time.perf_counter() - started) / max(warmup, 1)
        about = n * per_round
        say(f"timing {n} rounds of each side" + (f", about {about:.0f} s" if warmup and about >= 1 else
                                                 ", under a second" if warmup else ""))
    out = [np.empty(n) for _ in sides]
    for i in range(n):
        for times, runs in zip(out, sides):
            start = time.perf_counter()
            for f in runs:
                f()
            times[i] = time.perf_counter() - start
    return out


def resident_mb() -> float:
    """This process's resident memory now (Linux), else its peak so far."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _latencies(a: list[str], a_feeds: list[dict], b: list[str], b_feeds: list[dict], provider: str, runs: int,
               warmup: int, say: Say = None) -> list[np.ndarray]:
    """Seconds per round of side ``a`` and side ``b`` (each: models run one after another), the
    sessions open only while they are timed."""
    sides = [[(open_session(p, provider), p) for p in paths] for paths in (a, b)]
    calls = [[lambda s=s, f=f, p=p: runtime.quiet_run(s, None, f, p) for (s, p), f in zip(sessions, fs)]
             for sessions, fs in zip(sides, (a_feeds, b_feeds))]
    return _timed(calls, runs, warmup, say)


def _warm_up(provider: str) -> None:
    """Open and run a one-node session: ONNX Runtime's one-time costs (thread pools, kernel
    registries) are then out of the baseline, not charged to the first model measured."""
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "warm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    runtime.session(model, provider, built=True, lean=False).run(None, {"x": np.zeros(1, np.float32)})


def _memory_child(paths: list[str], feeds: list[dict[str, np.ndarray]], provider: str, queue) -> None:
    """In a fresh process: the resident host memory (MB) that loading ``paths`` and running each
    three times adds (ONNX Runtime's arenas keep what a run needed), after a warm-up session."""
    try:
        _warm_up(provider)
        base = resident_mb()
        sessions = [open_session(p, provider) for p in paths]
        for _ in range(3):
            for s, f, p in zip(sessions, feeds, paths):
                runtime.quiet_run(s, None, f, p)
        queue.put(resident_mb() - base)
    except Exception as exc:  # reported by the parent
        queue.put(exc)


def session_memory(paths: list[str], feeds: list[dict[str, np.ndarray]], provider: str) -> float:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(paths, feeds, provider, queue))
    proc.start()
    got = None
    while got is None:  # (a child that dies before it answers must not hang the bench)
        try:
            got = queue.get(timeout=1.0)
        except Empty:
            if not proc.is_alive() and queue.empty():
                raise UsageError(f"the memory measurement's child process exited with code {proc.exitcode} "
                                 "before reporting (out of memory? Called from Python, bench() needs an "
                                 "'if __name__ == \"__main__\":' guard: the child re-imports the calling script)") from None
    proc.join()
    if isinstance(got, Exception):
        raise got
    return float(got)


def bench(zipped: str, originals: list[str], data: list[dict[str, np.ndarray]] | None = None, provider: str = "cpu",
          batch: int = 32, runs: int = 50, warmup: int = 5, size: tuple[int, int] | None = None,
          say: Say = None) -> dict[str, object]:
    """Latency, session memory and bytes of ``zipped`` against ``originals`` (in its task order);
    ``size`` (H, W): at that input size (:func:`task_feeds`); ``say``: told each phase as it starts.

    Returns:
        {"zipped": Side, "originals": Side, "ratios": {latency, memory, bytes}, "tasks", "provider", "batch"}.
    """
    if provider not in runtime.PROVIDERS:
        raise UsageError(f"--provider {provider!r}: choose one of {', '.join(runtime.PROVIDERS)}")
    runtime.require_provider(runtime.PROVIDERS[provider][0], f"--provider {provider}")
    names = task_order(zipped)
    if len(names) != len(originals):
        raise UsageError(f"{zipped} holds {len(names)} tasks ({', '.join(names)}); give {len(names)} --originals")
    if data is not None and len(data) == 1:
        data = data * len(originals)
    if data is not None and len(data) != len(originals):
        raise UsageError(f"give one --data per original, or one for all: {len(originals)} originals, {len(data)} files")
    if runs < 1 or batch < 1 or warmup < 0:
        raise UsageError(f"--runs {runs} and --batch {batch}: give at least 1 of each")
    check_originals(zipped, names, originals)
    feeds = [task_feeds(p, None if data is None else data[i], batch, seed=i, size=size) for i, p in enumerate(originals)]
    zfeeds = zipped_inputs(zipped, names, feeds)
    for f in feeds:  # an input the zipped model shares gets one array: every original reads that one
        f.update({k: v for k, v in zfeeds.items() if k in f})
    runs_here(zipped, zfeeds, originals, feeds, provider)
    # (random inputs are unlike the calibration data: a lossy zip may differ there whatever the models)
    agreement = {} if data is None else output_agreement(zipped, names, originals, zfeeds, feeds, provider)
    tell = say or (lambda message: None)
    tell(f"{warmup} warm-up rounds of each side (the zipped model; the {len(originals)} originals one after another)")
    zipped_times, original_times = _latencies([zipped], [zfeeds], originals, feeds, provider, runs, warmup, say)
    sides = {}
    for key, times, paths, fs in (("zipped", zipped_times, [zipped], [zfeeds]),
                                  ("originals", original_times, originals, feeds)):
        tell(f"memory of the {key}: loaded and run in a fresh process")
        sides[key] = Side(float(np.median(times) * 1e3), float(np.percentile(times, 90) * 1e3),
                          session_memory(paths, fs, provider), sum(file_bytes(p) for p in paths))
    z, o = sides["zipped"], sides["originals"]
    ratios = {"latency": z.median_ms / o.median_ms, "memory": z.memory_mb / max(o.memory_mb, 1e-9),
              "bytes": z.bytes / o.bytes}
    return {"zipped": z, "originals": o, "ratios": ratios, "tasks": names, "provider": provider, "batch": batch,
            "runs": runs, "cpus": os.cpu_count(), "rel_err": agreement, "size": size}


def _outputs(model: onnx.ModelProto) -> dict[str, tuple]:
    return {o.name: io.static_dims(o)[1:] for o in model.graph.output}


def check_originals(zipped: str, names: list[str], originals: list[str]) -> None:
    """Each original must have its task's outputs (names, and sizes where both declare them), and
    the weights its task was zipped from (:mod:`onnxzip.stamp`)."""
    zipped_model = io.load_model(zipped, external=False)
    zipped_outs = _outputs(zipped_model)
    for task, path in zip(names, originals):
        mine = {k.split("/", 1)[1]: v for k, v in zipped_outs.items() if k.startswith(f"{task}/")}
        theirs = _outputs(io.load_model(path, external=False))
        same = set(mine) == set(theirs) and all(
            a is None or b is None or a == b for k in mine for a, b in zip(mine[k], theirs[k]))
        if not same:
            raise UsageError(f"{path}: its outputs {sorted(theirs)} {list(theirs.values())} are not those of task {task!r}, "
                             f"{sorted(mine)} {list(mine.values())}: give --originals in the zipped model's task order "
                             f"({', '.join(names)})")
    stamp.check_originals(zipped_model, names, [stamp.weights_sha256(io.load_model(p)) for p in originals], originals)


def runs_here(zipped: str, zfeeds: dict, originals: list[str], feeds: list[dict], provider: str) -> None:
    """One run of the zipped model on the bench inputs; where ONNX Runtime refuses it, whether the
    originals take these inputs, so that the error names the cause (a size no model here takes),
    not an inner node of the zipped graph."""
    try:
        runtime.quiet_run(open_session(zipped, provider), None, zfeeds, zipped)
    except InputError as exc:
        for path, f in zip(originals, feeds):
            try:
                runtime.quiet_run(open_session(path, provider), None, f, path)
            except InputError as theirs:
                raise InputError(f"the originals cannot run on these inputs either: {theirs}") from None
        raise exc


def output_agreement(zipped: str, names: list[str], originals: list[str], zfeeds: dict, feeds: list[dict],
                     provider: str) -> dict[str, float]:
    """Per task: the relative error of the zipped model's outputs against the original's on the
    bench inputs (a large one says the original is not the model that was zipped, or a lossy zip)."""
    zs = open_session(zipped, provider)
    got = dict(zip([o.name for o in zs.get_outputs()], runtime.quiet_run(zs, None, zfeeds, zipped)))
    out = {}
    for task, path, f in zip(names, originals, feeds):
        sess = open_session(path, provider)
        ref = dict(zip([o.name for o in sess.get_outputs()], runtime.quiet_run(sess, None, f, path)))
        num = sum(float(np.sum((np.asarray(got[f"{task}/{k}"], np.float64) - np.asarray(v, np.float64)) ** 2))
                  for k, v in ref.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f")
        den = sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in ref.values()
                  if isinstance(v, np.ndarray) and v.dtype.kind == "f")
        out[task] = float(np.sqrt(num / max(den, 1e-30)))
    return out


def format_bench(result: dict[str, object]) -> str:
    z, o, r = result["zipped"], result["originals"], result["ratios"]
    at = f" at {result['size'][0]}x{result['size'][1]}" if result.get("size") else ""
    lines = [f"{result['provider']}, batch {result['batch']}{at}, {result['runs']} timed runs each "
             f"(tasks: {', '.join(result['tasks'])})",
             f"{'':<10} {'median ms':>10} {'p90 ms':>10} {'memory MB':>10} {'bytes':>12}"]
    for label, side in (("zipped", z), ("originals", o)):
        lines.append(f"{label:<10} {side.median_ms:>10.3f} {side.p90_ms:>10.3f} {side.memory_mb:>10.1f} {side.bytes:>12,}")
    far = {t: e for t, e in result.get("rel_err", {}).items() if e > 0.5}
    if far:
        lines.append("note: on these inputs the zipped model's outputs differ from the originals' by relative error "
                     + ", ".join(f"{t} {e:.2f}" for t, e in far.items()) + ": check that --originals are the models that "
                     "were zipped (a lossy zip, or inputs unlike the calibration data, also do this)")
    lines.append(f"latency ratio {r['latency']:.3f}; memory ratio {r['memory']:.3f}; bytes ratio {r['bytes']:.3f}")
    return "\n".join(lines)
