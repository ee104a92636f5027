"""onnxzip.emit.fuse: each rewrite against the unfused graph run in ONNX Runtime (the oracle)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxzip import zip_models
from onnxzip.calibrate.runtime import onnxruntime
from onnxzip.emit.fuse import fuse_branches

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
RNG = np.random.default_rng(0)


def init(name, shape):
    return numpy_helper.from_array(RNG.normal(0, 0.5, shape).astype(np.float32), name)


def model(nodes, inits, inputs, outputs, opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(m, strict_mode=True)


def run(m, feeds):
    sess = onnxruntime().InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def floats(m):
    return sum(numpy_helper.to_array(i).size for i in m.graph.initializer if i.data_type == TensorProto.FLOAT)


def same(m, fused, feeds):
    want, got = run(m, feeds), run(fused, feeds)
    assert list(want) == list(got)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)
    onnx.checker.check_model(fused, full_check=True)


def ops(m):
    return [n.op_type for n in m.graph.node]


def test_conv_siblings_stack_into_one_op_per_bias_kind_and_store_weights_once():
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w3"], ["c3"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w4"], ["c4"], pads=[0, 0, 0, 0]),  # other attributes: apart
             *[helper.make_node("Relu", [f"c{i}"], [f"y{i}"]) for i in range(1, 5)]]
    inits = [init("w1", (4, 3, 3, 3)), init("b1", (4,)), init("w2", (5, 3, 3, 3)), init("b2", (5,)),
             init("w3", (2, 3, 3, 3)), init("w4", (2, 3, 3, 3))]
    m = model(nodes, inits, [("x", [2, 3, 6, 6])], ["y1", "y2", "y3", "y4"])
    fused, counts = fuse_branches(m)
    same(m, fused, {"x": RNG.normal(size=(2, 3, 6, 6)).astype(np.float32)})
    assert counts["siblings"] == 1 and ops(fused).count("Conv") == 3  # w1+w2 stacked; w3 (no bias), w4 apart
    assert floats(fused) == floats(m)


def test_gemm_siblings_with_row_biases_and_a_weight_used_twice():
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["y1"], transB=1),
             helper.make_node("Gemm", ["x", "w2", "b2"], ["y2"], transB=1),
             helper.make_node("Gemm", ["x", "w3", "b3"], ["y3"], transB=1),
             helper.make_node("Gemm", ["z", "w3", "b4"], ["y4"], transB=1)]  # w3 also serves another input
    inits = [init("w1", (3, 5)), init("b1", (1, 3)), init("w2", (4, 5)), init("b2", (4,)), init("w3", (2, 5)),
             init("b3", (2,)), init("b4", (2,))]
    m = model(nodes, inits, [("x", [3, 5]), ("z", [3, 5])], ["y1", "y2", "y3", "y4"])
    fused, counts = fuse_branches(m)
    same(m, fused, {"x": RNG.normal(size=(3, 5)).astype(np.float32), "z": RNG.normal(size=(3, 5)).astype(np.float32)})
    assert counts["siblings"] == 1 and ops(fused).count("Gemm") == 3  # w3 is not copied into a stack
    assert floats(fused) == floats(m)


def test_channelwise_ops_move_above_a_split_with_per_channel_constants():
    sizes = numpy_helper.from_array(np.array([2, 3], np.int64), "sizes")
    nodes = [helper.make_node("Split", ["x", "sizes"], ["s0", "s1"], axis=1),
             helper.make_node("Mul", ["s0", "k0"], ["m0"]), helper.make_node("Mul", ["s1", "k1"], ["m1"]),
             helper.make_node("Add", ["m0", "half"], ["a0"]), helper.make_node("Add", ["m1", "half"], ["a1"]),
             helper.make_node("MaxPool", ["a0"], ["p0"], kernel_shape=[2, 2]),
             helper.make_node("MaxPool", ["a1"], ["p1"], kernel_shape=[2, 2]),
             helper.make_node("Flatten", ["p0"], ["y0"]), helper.make_node("Flatten", ["p1"], ["y1"])]
    inits = [sizes, init("k0", (2, 1, 1)), init("k1", (3, 1, 1)),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    m = model(nodes, inits, [("x", [2, 5, 4, 4])], ["y0", "y1"])
    fused, counts = fuse_branches(m)
    same(m, fused, {"x": RNG.normal(size=(2, 5, 4, 4)).astype(np.float32)})
    assert counts["pushdown"] == 4 and ops(fused) == ["Mul", "Add", "MaxPool", "Flatten", "Split"]


def test_a_split_is_not_moved_past_ops_that_differ_or_outputs_read_twice():
    sizes = numpy_helper.from_array(np.array([2, 3], np.int64), "sizes")
    nodes = [helper.make_node("Split", ["x", "sizes"], ["s0", "s1"], axis=1),
             helper.make_node("Relu", ["s0"], ["y0"]), helper.make_node("Sigmoid", ["s1"], ["y1"]),
             helper.make_node("Split", ["x", "sizes"], ["t0", "t1"], axis=1),
             helper.make_node("Relu", ["t0"], ["u0"]), helper.make_node("Relu", ["t1"], ["u1"]),
             helper.make_node("Add", ["u0", "t0"], ["v0"])]  # t0 read twice
    m = model(nodes, [sizes], [("x", [2, 5])], ["y0", "y1", "u1", "v0"])
    fused, counts = fuse_branches(m)
    assert not any(counts.values()) and fused is m


def test_concat_of_one_tensors_channels_becomes_the_tensor_a_slice_or_a_gather():
    sizes = numpy_helper.from_array(np.array([2, 3, 1], np.int64), "sizes")
    nodes = [helper.make_node("Split", ["x", "sizes"], ["s0", "s1", "s2"], axis=1),
             helper.make_node("Concat", ["s0", "s1", "s2"], ["all"], axis=1),
             helper.make_node("Concat", ["s0", "s1"], ["front"], axis=1),
             helper.make_node("Concat", ["s0", "s2"], ["ends"], axis=1),
             *[helper.make_node("Relu", [t], [f"y_{t}"]) for t in ("all", "front", "ends")]]
    m = model(nodes, [sizes], [("x", [2, 6, 3])], ["y_all", "y_front", "y_ends"])
    fused, counts = fuse_branches(m)
    same(m, fused, {"x": RNG.normal(size=(2, 6, 3)).astype(np.float32)})
    assert counts["concat"] == 3 and sorted(ops(fused)) == ["Gather", "Relu", "Relu", "Relu", "Slice"]


def test_favor_speed_computes_the_same_network_with_fewer_ops():
    models = [str(SAMPLES / f"cnn_{t}.onnx") for t in ("digit", "parity")]
    calib = [str(SAMPLES / f"calib_{t}.npz") for t in ("digit", "parity")]
    size = zip_models(models, calib, share=0.5, names=("digit", "parity"), quiet=True)
    speed = zip_models(models, calib, share=0.5, names=("digit", "parity"), quiet=True, favor="speed")
    x = np.load(SAMPLES / "test_digit.npz")["image"][:64]
    a, b = run(size.model, {"image": x}), run(speed.model, {"image": x})
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-4 * np.abs(a[k]).max())
    assert len(speed.model.graph.node) < 0.5 * len(size.model.graph.node)
    # speed stores the shared blocks of partly shared layers in each task, the first Conv's too: one
    # Conv per task on the input, nothing stacked and sliced across the tasks there
    assert size.report["params_after"] < speed.report["params_after"] == speed.report["params_before"]
    first = [n for n in speed.model.graph.node if n.op_type == "Conv" and n.input[0] == "image"]
    assert len(first) == 2 and not any(n.op_type in ("Split", "Slice") and n.input[0] in first[0].output + first[1].output
                                       for n in speed.model.graph.node)


def test_favor_speed_keeps_a_first_gemm_on_a_shared_input_stored_once():
    """A Gemm's shared rows on the common input stay one block, stacked with the tasks' own rows."""
    models = [str(SAMPLES / f"mlp_{t}.onnx") for t in ("digit", "parity")]
    calib = [str(SAMPLES / f"calib_{t}.npz") for t in ("digit", "parity")]
    speed = zip_models(models, calib, share=0.5, names=("digit", "parity"), quiet=True, favor="speed")
    assert speed.report["params_after"] < speed.report["params_before"] - 150 * 64


def test_siblings_stack_only_on_graph_inputs_and_never_the_tasks_own_ops_alone():
    """Stacked ops on an inner tensor, or only the tasks' own ops, keep every task's result alive
    until the Split (measured: up to 2.3x ONNX Runtime's activation memory): left apart."""
    nodes = [helper.make_node("Relu", ["x"], ["h"]),
             helper.make_node("Conv", ["h", "w1", "b1"], ["c1"]), helper.make_node("Conv", ["h", "w2", "b2"], ["c2"]),
             helper.make_node("Conv", ["x", "w3", "b3"], ["a/c3"]), helper.make_node("Conv", ["x", "w4", "b4"], ["b/c4"])]
    inits = [init("w1", (4, 3, 1, 1)), init("b1", (4,)), init("w2", (5, 3, 1, 1)), init("b2", (5,)),
             init("w3", (4, 3, 1, 1)), init("b3", (4,)), init("w4", (5, 3, 1, 1)), init("b4", (5,))]
    m = model(nodes, inits, [("x", [2, 3, 6, 6])], ["c1", "c2", "a/c3", "b/c4"])
    fused, counts = fuse_branches(m, "shared/")
    assert not any(counts.values()) and fused is m
    nodes[2] = helper.make_node("Conv", ["h", "w2", "b2"], ["shared/c2"])  # a shared block, on an inner tensor:
    m = model(nodes, inits, [("x", [2, 3, 6, 6])], ["c1", "shared/c2", "a/c3", "b/c4"])  # still apart
    fused, counts = fuse_branches(m, "shared/")
    assert not any(counts.values()) and fused is m
    nodes[4] = helper.make_node("Conv", ["x", "w4", "b4"], ["shared/c4"])  # a shared block on the input: stacked
    m = model(nodes, inits, [("x", [2, 3, 6, 6])], ["c1", "shared/c2", "a/c3", "shared/c4"])
    fused, counts = fuse_branches(m, "shared/")
    same(m, fused, {"x": RNG.normal(size=(2, 3, 6, 6)).astype(np.float32)})
    assert counts["siblings"] == 1 and ops(fused).count("Conv") == 3


def test_favor_is_checked():
    from onnxzip import UsageError
    with pytest.raises(UsageError) as err:
        zip_models([str(SAMPLES / "cnn_digit.onnx")] * 2, [str(SAMPLES / "calib_digit.npz")] * 2, favor="fast",
                   quiet=True)
    assert str(err.value) == "--favor 'fast': choose size or speed"


def favor_fast(tmp_path, capsys):
    from onnxzip.cli import main
    argv = ["zip", str(SAMPLES / "cnn_digit.onnx"), str(SAMPLES / "cnn_parity.onnx"), "--data",
            str(SAMPLES / "calib_digit.npz"), "-o", str(tmp_path / "z.onnx"), "--favor", "fast"]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


def test_cli_refuses_an_unknown_favor_with_exit_code_2(tmp_path, capsys):
    code, lines = favor_fast(tmp_path, capsys)
    assert code == 2 and not (tmp_path / "z.onnx").exists()
    assert "--favor" in lines[-1] and "'fast'" in lines[-1] and "size" in lines[-1] and "speed" in lines[-1]


def test_cli_refuses_an_unknown_favor_in_one_line(tmp_path, capsys):
    code, lines = favor_fast(tmp_path, capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("onnxzip: error: ") and "--favor" in lines[0]
