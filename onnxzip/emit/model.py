"""Write the zipped multi-task ONNX model.

Each task's normalized graph is replayed node by node into one graph. A tensor that carries zipped
channels is held as *parts*: per channel segment, the shared channels and the task's private
channels, each its own tensor, so that

* a layer is split into blocks: shared rows x shared input columns use ONE initializer for every
  task; the other blocks are per task; the block results are summed (Gemm's C input, or Add);
* elementwise ops, pooling, BatchNormalization, Flatten and shape ops that keep the channel axis
  run per part (per-channel constants sliced); joins run part by part; Concat just lists parts;
* identical nodes (same op, inputs and attributes) are built once: on a shared input, the fully
  shared prefix of the network is computed once for all tasks.

Ops whose channel semantics onnxzip does not model get their inputs restored to the task's channel
order (Concat + Gather). Task outputs are named ``<task>/<output>``, in the task's channel order.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from ..graph import io
from ..graph.ir import ModelIR
from ..sharing.plan import ZipPlan
from .builder import SHARED, GraphBuilder
from .fuse import fuse_branches
from .layers import FORMS
from .task import Emitting, TaskEmitter


def emit_model(irs: list[ModelIR], plan: ZipPlan, names: list[str], shared_inputs: bool,
               favor: str = "size") -> onnx.ModelProto:
    """Build the zipped model: one graph, every task's outputs as ``<task>/<output>`` (non-tensor
    outputs, such as skl2onnx's ZipMap, keep their declared types).

    ``favor``: "size" stores every shared block once (a partly shared layer runs as blocks plus
    Adds); "speed" runs a partly shared layer as one op per task over its input joined, storing the
    shared block in each task. Either way the tasks' parallel ops are then fused (``fuse``).
    """
    b = GraphBuilder()
    common = Emitting(b, plan, shared_inputs, [x.name for x in irs[0].layers], FORMS.get(favor))
    inputs, outputs = [], []
    for t, (ir, name) in enumerate(zip(irs, names)):
        em = TaskEmitter(common, ir, t, name)
        em.run()
        if t == 0 or not shared_inputs:
            for inp in ir.graph.inputs:
                inputs.append(_value_info(em.values[inp.name].parts[0].tensor, inp))
        for out in ir.graph.outputs:
            final = em.tensor(out)
            want = f"{name}/{out.name}"
            if final != want:
                b.nodes.append(helper.make_node("Identity", [final], [want], name=b.unique(want + ".id")))
            kind = ir.output_types.get(out.name)
            if kind is not None and not kind.HasField("tensor_type"):
                outputs.append(helper.make_value_info(want, kind))
            else:
                outputs.append(_value_info(want, out, shape=False))
    opsets = [helper.make_opsetid("", irs[0].opset)] + [helper.make_opsetid(d, v) for d, v in
                                                          sorted(irs[0].extra_opsets.items())]
    model = helper.make_model(helper.make_graph(b.nodes, "onnxzip", inputs, outputs), opset_imports=opsets,
                              producer_name="onnxzip")
    while b.initializers:  # (moved one by one: protobuf copies what it is given; a pair's weights once)
        model.graph.initializer.append(b.initializers.pop(next(iter(b.initializers))))
    model.ir_version = max(helper.find_min_ir_version_for(opsets, ignore_unknown=True), 7)
    model = io.infer_shapes(model, strict_mode=True, data_prop=True)  # (run-time Reshape targets keep their sizes)
    fused, counts = fuse_branches(model, f"{SHARED}/")  # (reads the shapes)
    return io.infer_shapes(fused, strict_mode=True, data_prop=True) if any(counts.values()) else model


def _value_info(name: str, t: gs.Tensor, shape: bool = True) -> onnx.ValueInfoProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype or np.float32))
    dims = None if not shape or t.shape is None else [d if isinstance(d, (int, str)) else None for d in t.shape]
    return helper.make_tensor_value_info(name, elem, dims)
