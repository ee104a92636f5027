"""The zipped model at a second input size: where the source files leave sizes open (image height
and width), the zipped model runs at a larger size beside its originals, each task's outputs shaped
as the original's; where it does not, the sizes stay fixed to the calibration data's and the report
says why."""
from __future__ import annotations

import numpy as np
import onnx

from ..calibrate import runtime
from ..emit.shapes import zipped_input
from ..errors import InputError
from ..graph import io
from ..graph.ir import ModelIR
from ..report.records import SizesRecord
from .verify import zipped_feeds

#: samples run at the second size, per task
SIZE_SAMPLES = 2
#: each open size grows by this factor at the second size, the first open axis by the first
GROWTH = (1.5, 1.25)


def second_size(size: int, axis_rank: int) -> int:
    """A larger size for an open dim: ``GROWTH`` times, a multiple of 32 where ``size`` is one (detectors
    and segmenters downsample by 32)."""
    grown = int(np.ceil(size * GROWTH[min(axis_rank, len(GROWTH) - 1)]))
    return int(np.ceil(grown / 32) * 32) if size % 32 == 0 else max(grown, size + 1)


def resized(x: np.ndarray, axes: dict[int, int]) -> np.ndarray:
    """``x`` with each axis in ``axes`` resampled to its new size (nearest sample)."""
    for axis, n in axes.items():
        idx = np.floor(np.arange(n) * x.shape[axis] / n).astype(np.int64)
        x = np.take(x, idx, axis=axis)
    return x


def check_sizes(model: onnx.ModelProto, dims: dict[str, dict[int, str]], irs: list[ModelIR], names: list[str],
                protos: list[onnx.ModelProto], data: list[dict[str, np.ndarray]], device: str = "cpu") -> SizesRecord:
    """Run ``model`` (its inputs opened as ``dims``) and every original (opened the same way) at a
    second size on the first ``SIZE_SAMPLES`` samples of each task's ``data``."""
    calibrated, checked, grow = {}, {}, {}
    for name, axes in dims.items():
        t, original = zipped_input(name, names)
        shape = list(data[t][original].shape)
        calibrated[name] = shape
        grow[name] = {a: second_size(shape[a], r) for r, a in enumerate(sorted(axes))}
        checked[name] = [grow[name].get(a, n) for a, n in enumerate(shape)]
    record = SizesRecord(dims, calibrated, checked, [], True)
    try:
        sess = runtime.session(model, device)
    except Exception as exc:  # noqa: BLE001  (ORT raises its own types)
        return _fixed(record, f"ONNX Runtime refuses it with open sizes ({str(exc).splitlines()[0]})")
    for t, (ir, name, proto) in enumerate(zip(irs, names, protos)):
        feeds, mine, open_sizes = {}, {}, ir.open_sizes()
        for zipped, axes in grow.items():
            task, original = zipped_input(zipped, names)
            if task == t or original in open_sizes and zipped == original:
                mine[original] = axes
        for original, x in data[t].items():
            feeds[original] = resized(x[:SIZE_SAMPLES], mine.get(original, {}))
        opened = io.with_dims(proto, open_sizes)
        try:
            want = runtime.run(runtime.session(opened, device), feeds, ir.outputs, SIZE_SAMPLES)
        except Exception:  # noqa: BLE001  (the original declares the size open but does not take this one)
            return _fixed(record, f"the original of task {name!r} does not run at {_size(checked)} either")
        zipped_names = {i.name for i in sess.get_inputs()}
        zfeeds = {(k if k in zipped_names else f"{name}/{k}"): v for k, v in feeds.items()}
        try:
            got = runtime.quiet_run(sess, [f"{name}/{o}" for o in ir.outputs], zipped_feeds(sess, zfeeds))
        except InputError as exc:  # (ONNX Runtime's error, in one line)
            return _fixed(record, f"task {name!r} does not run at {_size(checked)} ({str(exc).split(': ', 1)[-1]})")
        errs = []
        for o, g in zip(ir.outputs, got):
            w = want[o]
            if not isinstance(w, np.ndarray) or np.asarray(g).shape != w.shape:
                if isinstance(w, np.ndarray):
                    return _fixed(record, f"task {name!r} output {o!r} is {list(np.shape(g))} at {_size(checked)}, "
                                          f"its original's {list(w.shape)}")
                continue
            if w.dtype.kind == "f":
                errs.append(float(np.linalg.norm(np.asarray(g, np.float64) - w) / max(np.linalg.norm(w), 1e-30)))
        record.rel_err.append(max(errs) if errs else None)
    return record


def _size(checked: dict[str, list[int]]) -> str:
    return ", ".join(f"{k} {v}" for k, v in checked.items())


def _fixed(record: SizesRecord, why: str) -> SizesRecord:
    record.ok, record.note = False, why
    return record
