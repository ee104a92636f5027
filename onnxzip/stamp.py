"""Which models a zipped model was made from: the zip stamps each task's weights fingerprint into the
model's metadata (``onnxzip.originals``), and ``bench`` and ``distill`` check the ``--originals``
they are given against it, so that a wrong or reordered original is an error, not a quiet ratio."""
from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import UsageError

KEY = "onnxzip.originals"
log = logging.getLogger(__name__)


def weights_sha256(model: onnx.ModelProto) -> str:
    """The SHA-256 of a model's weights: every float initializer (name order: dtype, shape, values),
    the same whatever the file's layout (external data, serialization order)."""
    h = hashlib.sha256()
    for t in sorted(model.graph.initializer, key=lambda t: t.name):
        a = np.ascontiguousarray(numpy_helper.to_array(t))
        if a.dtype.kind == "f":
            h.update(f"{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def stamp(model: onnx.ModelProto, fingerprints: dict[str, str]) -> None:
    """Record each task's original weights fingerprint (task -> SHA-256) in ``model``."""
    for p in [p for p in model.metadata_props if p.key == KEY]:
        model.metadata_props.remove(p)
    model.metadata_props.add(key=KEY, value=json.dumps(fingerprints))


def check_originals(zipped: onnx.ModelProto, names: list[str], fingerprints: list[str], sources: list[str]) -> None:
    """Raise :class:`UsageError` where an original's weights (``fingerprints``, per task in order;
    ``sources`` name them) are not those its task was zipped from. A zipped model without a readable
    stamp (made before it existed, or its metadata edited) is not checked, and that is said."""
    stamped = next((p.value for p in zipped.metadata_props if p.key == KEY), None)
    try:
        want = json.loads(stamped) if stamped is not None else None
    except ValueError:
        want = None
    if not isinstance(want, dict) or not all(isinstance(v, str) for v in want.values()):
        log.warning("the zipped model's record of its originals' weights (metadata %r) is %s: the --originals are "
                    "checked by their outputs only", KEY, "missing" if stamped is None else "unreadable")
        return
    for task, got, source in zip(names, fingerprints, sources):
        if task in want and got != want[task]:
            raise UsageError(f"{source}: not the model task {task!r} was zipped from (its weights differ); give "
                             f"--originals in the zipped model's task order ({', '.join(names)})")
