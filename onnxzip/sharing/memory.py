"""A zip's memory by design, known before the work starts: what is resident then (libraries, the
models once, the calibration data), the weights once more in ONNX Runtime's stage sessions, the
zipped weights (the plan's, float32), the largest layer's statistics, and the live tensors (the
spool's in-memory part and one stage batch). A layer whose statistics alone cannot fit is refused
here, in one line naming it, before minutes are spent on the layers below."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..calibrate.spool import SPOOL_MEMORY
from ..calibrate.stages import STAGE_BYTES
from ..errors import UsageError
from ..graph.ir import ModelIR, activation_bytes, largest_tensor_bytes
from ..report.records import MemoryRecord
from ..timing import rss_mb
from . import problem
from .problem import Problems

if TYPE_CHECKING:
    from ..options import ZipOptions


def memory_by_design(irs: list[ModelIR], opts: ZipOptions, samples: int) -> MemoryRecord:
    """The zip's memory by design (MB), from the models' sizes and one sample's tensors.

    Raises:
        UsageError: a layer's statistics take more than half this machine's memory (named), or
            what the zip adds to the memory resident now more than the rest of it.
    """
    problems = Problems(irs, opts, None, samples)
    memory = problem.available_memory()
    shared = _shared_groups(irs[0], opts)
    stats, worst = 0, ""
    for li, layer in enumerate(irs[0].layers):
        if li in irs[0].spaces.followers or not problems.estimator.uses_data or problems.offset(li):
            continue
        if problems.wide(li):  # (its input rows, float64, a copy per task and one for the reference)
            need = samples * (layer.fan_in + 1) * 8 * 2 * len(irs)
        else:
            need = problems.dense_bytes(li)
            if li in shared and not problems.fits(li):
                raise problems.too_large(li)
        if need > stats:
            stats, worst = need, layer.name
    weights = sum(ir.file_params[1] if ir.file_params else _weight_bytes(ir) for ir in irs)
    # (the plan's float32 weights; the loop's copy in each task's original order is one layer's)
    zipped = sum((ir.file_params[0] * 4 if ir.file_params else _weight_bytes(ir)) for ir in irs)
    live = min(SPOOL_MEMORY, samples * sum(2 * largest_tensor_bytes(ir) for ir in irs))
    batch = max(activation_bytes(ir) * max(1, min(opts.batch_size, STAGE_BYTES // max(largest_tensor_bytes(ir), 1)))
                for ir in irs)
    record = MemoryRecord(round(rss_mb(), 1), round(weights / 1e6, 1), round(zipped / 1e6, 1), round(stats / 1e6, 1),
                          worst, round((live + batch) / 1e6, 1))
    if (record.total_mb - record.process_mb) * 1e6 > memory - record.process_mb * 1e6:
        raise UsageError(f"this zip needs about {_size(record.total_mb * 1e6)} by design ({record.parts()}), more "
                         f"than this machine's {_size(memory)}")
    return record


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _weight_bytes(ir: ModelIR) -> int:
    return sum(np.asarray(t.values).nbytes for t in ir.graph.tensors().values() if hasattr(t, "values"))


def _shared_groups(ir: ModelIR, opts: ZipOptions) -> set[int]:
    """The layers whose groups a ``--share`` list leaves a share above 0 (every layer otherwise)."""
    if not isinstance(opts.share, tuple):
        return set(range(len(ir.layers)))
    return {li for g, members in enumerate(ir.spaces.groups) for li in members
            if g >= len(opts.share) or opts.share[g] is None or opts.share[g] > 0}
