"""Sizes as open as the originals': the zip runs at the calibration data's sizes, the emitted model
takes every size the source files leave open (image height and width, ...) again.

The graph is emitted with the calibration sizes (shape inference and the fuse pass read them); the
inputs then take their declared dim names back and every inferred shape is inferred again, named.
Whether the model really runs at another size is measured, not assumed
(:func:`onnxzip.check.shapes.check_sizes`).
"""
from __future__ import annotations

import logging

import onnx

from ..graph import io
from ..graph.ir import ModelIR

log = logging.getLogger(__name__)


def zipped_input(name: str, names: list[str]) -> tuple[int, str]:
    """A zipped model's input -> (its task, the original input's name): ``<task>/<input>`` under
    ``--separate-inputs``, else the original name (task 0's)."""
    task, _, rest = name.partition("/")
    return (names.index(task), rest) if rest and task in names else (0, name)


def open_dims(model: onnx.ModelProto, open_sizes: list[dict[str, dict[int, str]]], names: list[str]
              ) -> dict[str, dict[int, str]]:
    """Per zipped input, the axes to open and their names (the first task's name for an input every
    task has, so that one name means one size)."""
    out = {}
    for vi in model.graph.input:
        t, original = zipped_input(vi.name, names)
        axes = open_sizes[t].get(original) or {}
        if axes:
            first = next((s[original] for s in open_sizes if original in s), axes)
            out[vi.name] = {a: first.get(a, n) for a, n in axes.items()}
    return out


def keep_dynamic(model: onnx.ModelProto, irs: list[ModelIR], names: list[str]
                 ) -> tuple[onnx.ModelProto, dict[str, dict[int, str]], tuple]:
    """``model``, changed in place (a copy is a transformer pair's zipped weights once more): the
    sizes its tasks' source files leave open (:meth:`ModelIR.open_sizes`) opened again (zipped
    input -> axis -> dim name) and shapes inferred again; and what :func:`sized_again` needs to put
    the calibration sizes back (zipped input -> axis -> size, and the outputs as declared at them).
    ``model`` and {}, () where nothing is open or inference fails (said)."""
    dims = open_dims(model, [ir.open_sizes() for ir in irs], names)
    if not dims:
        return model, {}, ()
    sizes = {vi.name: {a: vi.type.tensor_type.shape.dim[a].dim_value for a in dims[vi.name]
                       if vi.type.tensor_type.shape.dim[a].HasField("dim_value")}
             for vi in model.graph.input if vi.name in dims}
    before = [onnx.ValueInfoProto.FromString(vi.SerializeToString()) for vi in model.graph.output]
    io.with_dims(model, dims, copy=False)
    try:
        model = io.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:  # noqa: BLE001  (onnx raises several types; the sized model stands)
        log.warning("the zipped model keeps the calibration sizes: shape inference fails with them open (%s)",
                    str(exc).splitlines()[0])
        return sized_again(model, (sizes, before)), {}, ()
    for vi, old in zip(model.graph.output, before):  # (an output inference cannot type keeps its rank)
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            if old.type.HasField("tensor_type") and old.type.tensor_type.HasField("shape"):
                vi.type.tensor_type.shape.CopyFrom(old.type.tensor_type.shape)
                for d in vi.type.tensor_type.shape.dim[1:]:
                    d.Clear()
    return model, dims, (sizes, before)


def sized_again(model: onnx.ModelProto, before: tuple) -> onnx.ModelProto:
    """``model`` (in place) with its inputs at the calibration sizes and its shapes inferred again
    (``before``: from :func:`keep_dynamic`; the outputs as declared at those sizes, where inference fails)."""
    sizes, outputs = before
    io.with_dims(model, sizes, copy=False)
    try:
        return io.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception:  # noqa: BLE001  (it inferred at these sizes before: the outputs as they were)
        del model.graph.output[:]
        model.graph.output.extend(outputs)
        return model
