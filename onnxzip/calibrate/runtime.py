"""ONNX Runtime sessions: the one place that opens them and imports onnxruntime (lazily; normalize's
constant folding only checks that it is installed)."""
from __future__ import annotations

import functools
import logging
from typing import Iterator

import numpy as np
import onnx

from ..errors import InputError, InternalError, UsageError
from ..graph import io

log = logging.getLogger(__name__)
#: device -> the providers a session asks for, the first one required (``tensorrt``: ``onnxzip bench`` only)
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}
#: a model with more bytes of weights than this reaches ONNX Runtime through a temporary file, not
#: as one serialized string beside the model and ONNX Runtime's own copy (past protobuf's 2 GB: always)
FILE_BYTES = 256 << 20
#: whole-model runs (the originals, verify) take fewer samples per batch where activations would pass this
RUN_BYTES = 512 << 20


def onnxruntime():
    """The onnxruntime module, or a :class:`UsageError` naming the extra to install."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError("onnxruntime is not installed: pip install 'onnxzip[cpu]' "
                         "(or 'onnxzip[gpu]' for CUDA; never both)") from None
    ort.set_default_logger_severity(3)  # (its graph optimizers' warnings are not the user's concern: errors only)
    return ort


def require_provider(provider: str, what: str) -> None:
    """A :class:`UsageError` naming ``what`` asked for ``provider`` where this build lacks it."""
    available = onnxruntime().get_available_providers()
    if provider not in available:
        raise UsageError(f"{what} needs {provider}, which this onnxruntime build lacks (available: "
                         f"{', '.join(available)}); install 'onnxzip[gpu]'")


def session(model: onnx.ModelProto | str, device: str = "cpu", built: bool = False, *, lean: bool = True,
            what: str | None = None):
    """An InferenceSession on ``device`` (:data:`PROVIDERS`); refuses a silent fall-back to CPU.

    ``built``: the graph is one onnxzip made (a stage, a reverse graph, the zipped model); if ONNX
    Runtime refuses it, that is a bug (:class:`InternalError`), not a problem with the user's file.
    ``lean``: the options onnxzip's own runs use (no memory arena, no spinning threads); False:
    ONNX Runtime's defaults, as a deployment runs them (``onnxzip bench``). ``what``: the file or
    flag that asked, for messages.
    """
    ort = onnxruntime()
    if device not in PROVIDERS:
        raise UsageError(f"unknown device {device!r}; choose one of: {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[device]
    require_provider(wanted[0], what or f"device {device!r}")
    where = f"{what}: " if what else ""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if lean:
        # Zipping keeps two stage sessions stepping in turn: idle threads spinning for one session took
        # the cores from the other (+50% time on 2 cores), and each session's memory arena kept its
        # largest batch (a ResNet-50's stages: 2.9 GB peak with arenas, 2.1 GB without, no slower).
        opts.enable_cpu_mem_arena = False
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        if not isinstance(model, str) and io.weight_bytes(model) > FILE_BYTES:
            with io.on_disk(model) as path:
                sess = ort.InferenceSession(path, opts, providers=wanted)
        else:
            sess = ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(), opts,
                                        providers=wanted)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        if built:
            raise InternalError(f"onnxruntime refuses a graph onnxzip built: {exc}") from exc
        raise InputError(f"{where}onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None
    if sess.get_providers()[0] != wanted[0]:
        raise UsageError(f"{where}onnxruntime fell back to {sess.get_providers()[0]} instead of {wanted[0]}; "
                         f"not reporting a {sess.get_providers()[0]} run as {device}")
    return sess


def fixed_batch(sess) -> int | None:
    """The batch size an input of the session pins, or None."""
    return next((i.shape[0] for i in sess.get_inputs() if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0),
                None)


def _run_errors() -> tuple[type, ...]:
    """ONNX Runtime's own errors while running: a model that cannot run on the inputs given (token
    ids outside its vocabulary, a sequence longer than it takes, a size it cannot take)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as C
    return tuple(getattr(C, n) for n in ("Fail", "InvalidArgument", "RuntimeException", "NotImplemented", "EPFail")
                 if hasattr(C, n))


@functools.lru_cache(maxsize=1)
def _quiet_options():
    """One RunOptions for every run (stage runs are a hot path): ONNX Runtime's own log off (fatal only)."""
    opts = onnxruntime().RunOptions()
    opts.log_severity_level = 4
    return opts


def quiet_run(sess, outputs: list[str] | None, feeds: dict[str, np.ndarray], what: str = "the model",
              built: bool = False) -> list:
    """``sess.run`` without ONNX Runtime's own error line; its error as one line naming ``what`` (a
    user's model on the user's inputs), or as an :class:`InternalError` for a graph onnxzip ``built``."""
    try:
        return sess.run(outputs, feeds, _quiet_options())
    except _run_errors() as exc:
        if built:
            raise InternalError(f"onnxruntime cannot run a graph onnxzip built ({what}): {exc}") from exc
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"onnxruntime cannot run {what} on these inputs ({shapes}): {first}") from None


def run_batches(sess, feeds: dict[str, np.ndarray], outputs: list[str], batch: int,
                what: str = "the model", built: bool = False) -> Iterator[list[np.ndarray]]:
    """Run ``sess`` over the leading axis of ``feeds`` in batches; yields the outputs of each batch.

    A model with a fixed batch size gets a final partial batch padded (by repeating its samples)
    and its outputs cut back to the real samples, so every sample counts whatever the total.
    """
    n = next(iter(feeds.values())).shape[0]
    fixed = fixed_batch(sess)
    size = fixed or batch
    names = [i.name for i in sess.get_inputs()]
    for i in range(0, n, size):
        chunk = {k: feeds[k][i:i + size] for k in names}
        real = next(iter(chunk.values())).shape[0] if chunk else size
        if real < size and fixed:
            chunk = {k: np.resize(v, (size,) + v.shape[1:]) for k, v in chunk.items()}
            yield [o[:real] for o in quiet_run(sess, outputs, chunk, what, built)]
        else:
            yield quiet_run(sess, outputs, chunk, what, built)


def run(sess, feeds: dict[str, np.ndarray], outputs: list[str] | None = None, batch: int = 256,
        what: str = "the model", built: bool = False) -> dict[str, np.ndarray]:
    """All outputs (default: every graph output) over all samples, concatenated along axis 0
    (``what``, ``built``: :func:`quiet_run`)."""
    outputs = outputs or [o.name for o in sess.get_outputs()]
    parts = [list(r) for r in run_batches(sess, feeds, outputs, batch, what, built)]
    if len(parts) == 1:  # one batch: no copy
        return dict(zip(outputs, parts[0]))
    return {name: np.concatenate([p[j] for p in parts]) if parts and isinstance(parts[0][j], np.ndarray)
            else [x for p in parts for x in p[j]] for j, name in enumerate(outputs)}


def zeros(spec, n: int | None = None, sizes: dict[str, int] | None = None) -> np.ndarray:
    """Zeros for an ONNX Runtime input: ``n`` samples on axis 0 (None: its own size there), for a
    size the model leaves open its size in ``sizes`` (dim name -> size) where named there, else 1."""
    dims = [d if isinstance(d, int) else (sizes or {}).get(d, 1) for d in spec.shape]
    return np.zeros(dims if n is None or not dims else [n] + dims[1:], dtype=numpy_dtype(spec))


def numpy_dtype(spec) -> np.dtype:
    """The numpy dtype of an ONNX Runtime input or output (its ``type``, e.g. ``tensor(bool)``)."""
    name = spec.type[len("tensor("):-1] if spec.type.startswith("tensor(") else spec.type
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(getattr(onnx.TensorProto, name.upper())))
