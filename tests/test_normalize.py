import graphs
import numpy as np
import onnx
import pytest
from onnx import helper

from onnxzip.errors import InputError, UnsupportedOpError
from onnxzip.graph.ir import build_ir
from onnxzip.graph.normalize import prepare


def normalized_matches(m: onnx.ModelProto, x: np.ndarray, opset: int = 17):
    ir = build_ir(m, "t", "test.onnx", opset)
    before = graphs.run(m, {"x": x})
    after = graphs.run(ir.to_onnx(), {"x": x})
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    return ir


@pytest.mark.parametrize("style", ["gemm", "gemm_t", "matmul"])
def test_dense_styles_become_canonical_gemm(style):
    ir = normalized_matches(graphs.mlp(0, style=style), graphs.data(1, (12,)))
    ops = [n.op for n in ir.graph.nodes]
    assert ops == ["Gemm", "Relu", "Gemm", "Relu", "Gemm"]  # Dropout/Identity gone, MatMul+Add fused
    for node in ir.graph.nodes:
        if node.op == "Gemm":
            assert node.attrs == {"transB": 1}
    assert [layer.shape for layer in ir.layers] == [(16, 12), (10, 16), (3, 10)]
    assert ir.hidden == [0, 1]
    assert ir.outputs == ["y"]


@pytest.mark.parametrize("bn,bias,reshape", [(True, True, False), (True, False, True), (False, False, False)])
def test_cnn_batchnorm_folded_and_reshape_flattened(bn, bias, reshape):
    ir = normalized_matches(graphs.cnn(0, bn=bn, bias=bias, reshape=reshape), graphs.data(2, (3, 8, 8)))
    ops = [n.op for n in ir.graph.nodes]
    assert "BatchNormalization" not in ops and "Reshape" not in ops
    assert ops.count("Flatten") == 1
    assert [layer.kind for layer in ir.layers] == ["conv", "conv", "dense", "dense"]
    assert ir.hidden == [0, 1, 2]
    assert ir.spaces.layout["flat"].block == 4  # 8 channels x 2 x 2 -> 4 features per channel


def test_opset9_with_initializers_as_inputs():
    m = graphs.cnn(3, bn=True, opset=9)
    m.ir_version = 3
    for init in m.graph.initializer:  # old files list weights as graph inputs
        m.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    ir = normalized_matches(m, graphs.data(4, (3, 8, 8)), opset=9)
    assert [s.name for s in ir.inputs] == ["x"]
    assert len(ir.layers) == 4


def test_opset21_converts_down():
    m = graphs.mlp(5, opset=21)
    m.ir_version = 10
    ir = normalized_matches(m, graphs.data(6, (12,)), opset=20)
    assert ir.opset == 20


def test_input_model_is_not_modified():
    m = graphs.cnn(7)
    before = m.SerializeToString()
    build_ir(m, "t", "t.onnx", 17)
    assert m.SerializeToString() == before


def test_unknown_op_between_layers_is_restored_to_task_order():
    m = graphs.cnn(8, bn=False)
    relu = next(n for n in m.graph.node if n.name == "relu0")
    relu.op_type, relu.name = "LRN", "my_lrn"
    relu.attribute.append(helper.make_attribute("size", 3))
    ir = build_ir(m, "t", "t.onnx", 17)
    assert ir.spaces.restore == {"my_lrn": [0]}
    assert "r0" in ir.spaces.private and "p0" in ir.spaces.private  # LRN output and what follows it
    assert ir.hidden == [0, 1, 2]


def test_custom_domain_is_refused():
    m = graphs.mlp(9)
    m.graph.node[1].domain = "com.example"
    with pytest.raises(UnsupportedOpError, match="custom-domain"):
        build_ir(m, "t", "t.onnx", 17)


def test_opset_out_of_range():
    m = graphs.mlp(10, opset=8)
    with pytest.raises(InputError, match="opset 8"):
        build_ir(m, "t", "t.onnx", 17)


def test_grouped_conv_is_replayed_on_task_order():
    m = graphs.cnn(11, channels=(3, 6, 6), bn=False)
    conv = next(n for n in m.graph.node if n.name == "conv1")
    conv.attribute.append(helper.make_attribute("group", 3))
    w = next(i for i in m.graph.initializer if i.name == "cw1")
    w.CopyFrom(onnx.numpy_helper.from_array(np.zeros((6, 2, 3, 3), np.float32), "cw1"))
    ir = build_ir(m, "t", "t.onnx", 17)
    assert ir.spaces.restore == {"conv1": [0]}
    assert [layer.name for layer in ir.layers] == ["conv0", "fc0", "fc1"]


def test_identity_aliased_weights_are_unaliased():
    """torch's legacy exporter aliases byte-identical initializers through Identity: not a shared layer."""
    m = graphs.mlp(12, sizes=(5, 5, 5, 2))
    fc1 = next(n for n in m.graph.node if n.name == "fc1")
    m.graph.initializer.remove(next(i for i in m.graph.initializer if i.name == "w1"))
    m.graph.node.insert(0, helper.make_node("Identity", ["w0"], ["w0_alias"], name="alias"))
    fc1.input[1] = "w0_alias"
    ir = normalized_matches(m, graphs.data(13, (5,)))
    weights = [layer.weight for layer in ir.layers]
    assert len(set(weights)) == 3
    w0, _ = ir.weights(ir.layers[0])
    w1, _ = ir.weights(ir.layers[1])
    np.testing.assert_array_equal(w0, w1)  # equal values, separate tensors
    assert "Identity" not in [n.op for n in ir.graph.nodes]


# ---------------------------------------------------------------- constant folding and shape targets

def _se_net(seed: int, classes: int = 3, constant_nodes: bool = True, stride=(1, 1),
            bias_4d: bool = False) -> onnx.ModelProto:
    """conv -> HardSwish -> squeeze-excite (its biases stored as (C,) and reshaped to (1, C, 1, 1) at
    run time, or stored as (1, C, 1, 1) where ``bias_4d``) -> GAP -> Reshape to (batch, -1) with the
    batch taken from Shape/Slice/Concat -> Gemm. ``constant_nodes``: weights as Constant nodes (else
    initializers)."""
    rng = np.random.default_rng(seed)
    weights = {"cw": rng.normal(0, .3, (6, 3, 3, 3)), "cb": rng.normal(0, .1, 6),
               "sw1": rng.normal(0, .3, (2, 6, 1, 1)), "sb1": rng.normal(0, .1, 2),
               "sw2": rng.normal(0, .3, (6, 2, 1, 1)), "sb2": rng.normal(0, .1, 6),
               "hw": rng.normal(0, .3, (6, classes)), "hb": rng.normal(0, .1, classes)}
    arrays = {k: np.asarray(v, np.float32) for k, v in weights.items()}
    arrays.update({"one_c": np.array([1, -1, 1, 1], np.int64), "zero": np.array([0], np.int64),
                   "one": np.array([1], np.int64), "minus_one": np.array([-1], np.int64)})
    if bias_4d:
        for k in ("sb1", "sb2"):
            arrays[k + "_r"] = arrays.pop(k).reshape(1, -1, 1, 1)
    reshapes = [] if bias_4d else [
        helper.make_node("Reshape", ["sb1", "one_c"], ["sb1_r"], name="se_b1_reshape"),
        helper.make_node("Reshape", ["sb2", "one_c"], ["sb2_r"], name="se_b2_reshape")]
    if constant_nodes:
        nodes = [helper.make_node("Constant", [], [k], name=f"const_{k}", value=onnx.numpy_helper.from_array(v, k))
                 for k, v in arrays.items()]
        inits = []
    else:
        nodes, inits = [], [onnx.numpy_helper.from_array(v, k) for k, v in arrays.items()]
    nodes += reshapes + [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=list(stride)),
        helper.make_node("HardSwish", ["c"], ["a"], name="act"),
        helper.make_node("GlobalAveragePool", ["a"], ["s0"], name="se_pool"),
        helper.make_node("Conv", ["s0", "sw1"], ["s1"], name="se_fc1", kernel_shape=[1, 1]),
        helper.make_node("Add", ["s1", "sb1_r"], ["s2"], name="se_add1"),
        helper.make_node("Relu", ["s2"], ["s3"], name="se_relu"),
        helper.make_node("Conv", ["s3", "sw2"], ["s4"], name="se_fc2", kernel_shape=[1, 1]),
        helper.make_node("Add", ["s4", "sb2_r"], ["s5"], name="se_add2"),
        helper.make_node("HardSigmoid", ["s5"], ["s6"], name="se_gate", alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["a", "s6"], ["m"], name="se_mul"),
        helper.make_node("GlobalAveragePool", ["m"], ["g"], name="gap"),
        helper.make_node("Shape", ["g"], ["g_shape"], name="shape"),
        helper.make_node("Slice", ["g_shape", "zero", "one", "zero"], ["batch"], name="slice"),
        helper.make_node("Concat", ["batch", "minus_one"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["g", "target"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "hw"], ["mm"], name="head"),
        helper.make_node("Add", ["mm", "hb"], ["y"], name="head_bias"),
    ]
    return graphs.model(nodes, inits, [graphs.inp("x", ["N", 3, 8, 8])], [graphs.inp("y", ["N", classes])])


@pytest.mark.parametrize("constant_nodes", [True, False])
def test_constant_reshapes_and_shape_targets_fold(constant_nodes):
    """Constant-node weights, a (C,) bias reshaped to (1, C, 1, 1) and a Reshape target built from
    Shape/Slice/Concat all leave the graph; the flatten becomes Flatten and the head a Gemm."""
    m = _se_net(0, constant_nodes=constant_nodes)
    ir = normalized_matches(m, graphs.data(1, (3, 8, 8), n=5))
    ops = [n.op for n in ir.graph.nodes]
    assert ops == ["Conv", "HardSwish", "GlobalAveragePool", "Conv", "Add", "Relu", "Conv", "Add", "HardSigmoid",
                   "Mul", "GlobalAveragePool", "Flatten", "Gemm"]
    adds = [n for n in ir.graph.nodes if n.op == "Add"]
    assert [n.inputs[1].values.shape for n in adds] == [(1, 2, 1, 1), (1, 6, 1, 1)]  # folded constants
    assert len(m.graph.node) == (31 if constant_nodes else 19)  # 12 Constant nodes
    assert [layer.kind for layer in ir.layers] == ["conv", "conv", "conv", "dense"]
    assert ir.spaces.restore == {}  # nothing left that needs the task's own channel order


def test_constant_reshape_of_bias_matches_an_initializer_bias():
    """Two exporters of one architecture (SE bias as a (1, C, 1, 1) initializer vs (C,) + Reshape,
    weights as initializers vs Constant nodes) normalize to one form and align."""
    from onnxzip.graph.align import align
    a = build_ir(_se_net(0, constant_nodes=False, bias_4d=True), "a", "a.onnx", 17)
    b = build_ir(_se_net(1, constant_nodes=True), "b", "b.onnx", 17)
    assert [n.op for n in a.graph.nodes] == [n.op for n in b.graph.nodes]
    align([a, b])


def _reshape_net(target_nodes, target: str = "t", data_shape=("N", 4, 2, 3)) -> onnx.ModelProto:
    inits = [onnx.numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
             {"zero": [0], "one": [1], "two": [2], "minus_one": [-1], "idx0": 0, "idx1": 1}.items()]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu")] + target_nodes + [
        helper.make_node("Reshape", ["r", target], ["y"], name="reshape")]
    return graphs.model(nodes, inits, [graphs.inp("x", list(data_shape))], [graphs.inp("y", None)])


@pytest.mark.parametrize("style,expect", [
    ("slice", [0, -1]),              # x.view(x.size(0), -1): batch copied
    ("gather", [0, -1]),             # Gather + Unsqueeze of the batch dim
    ("static", [0, 4, -1]),          # Shape(x)[0:2]: the channel dim is static
    ("shape_attr", [0, 4, -1]),      # Shape(x, end=2) (opset 15)
])
def test_reshape_targets_from_shapes_become_constants(style, expect):
    from onnxzip.graph.normalize import fold_reshape_shapes
    tail = helper.make_node("Concat", ["head", "minus_one"], ["t"], name="concat", axis=0)
    if style == "slice":
        nodes = [helper.make_node("Shape", ["r"], ["s"], name="shape"),
                 helper.make_node("Slice", ["s", "zero", "one", "zero"], ["head"], name="slice")]
    elif style == "gather":
        nodes = [helper.make_node("Shape", ["r"], ["s"], name="shape"),
                 helper.make_node("Gather", ["s", "idx0"], ["b"], name="gather", axis=0),
                 helper.make_node("Unsqueeze", ["b", "zero"], ["head"], name="unsq")]
    elif style == "static":
        nodes = [helper.make_node("Shape", ["r"], ["s"], name="shape"),
                 helper.make_node("Slice", ["s", "zero", "two"], ["head"], name="slice")]
    else:
        nodes = [helper.make_node("Shape", ["r"], ["head"], name="shape", end=2)]
    m = _reshape_net(nodes + [tail])
    graph = prepare(m, 17, "t.onnx")
    assert fold_reshape_shapes(graph) == 1
    node = next(n for n in graph.nodes if n.op == "Reshape")
    assert np.asarray(node.inputs[1].values).tolist() == expect
    ir = normalized_matches(m, graphs.data(2, (4, 2, 3), n=3))
    assert [n.op for n in ir.graph.nodes] == ["Relu", "Flatten" if len(expect) == 2 else "Reshape"]


def test_reshape_target_from_another_tensors_dynamic_dim_is_kept():
    """A dynamic dim of another tensor, or at another position, cannot become a 0 (copy)."""
    from onnxzip.graph.normalize import fold_reshape_shapes
    nodes = [helper.make_node("Shape", ["r"], ["s"], name="shape"),
             helper.make_node("Slice", ["s", "zero", "one"], ["b"], name="slice"),
             helper.make_node("Concat", ["minus_one", "b"], ["t"], name="concat", axis=0)]
    m = _reshape_net(nodes)
    graph = prepare(m, 17, "t.onnx")
    assert fold_reshape_shapes(graph) == 0
    normalized_matches(m, graphs.data(3, (4, 2, 3), n=3))


def test_wrongly_declared_output_rank_is_inferred_again():
    """An exporter that declares a (N, C) output as rank 0: the normalized graph carries the real shape
    (ONNX Runtime and the gradient graphs trust declared shapes)."""
    m = graphs.cnn(14)
    m.graph.output[0].type.tensor_type.shape.ClearField("dim")  # a shape with no dims: a scalar
    ir = normalized_matches(m, graphs.data(15, (3, 8, 8), n=4))
    assert len(ir.graph.outputs[0].shape) == 2 and ir.graph.outputs[0].shape[1] == 4
    good = build_ir(graphs.cnn(14), "t", "t.onnx", 17)
    assert good.graph.outputs[0].shape == ["N", 4]  # declared names kept where the declaration is right


def test_conv_strides_may_differ_between_tasks():
    """Stride, padding and dilation only say where a kernel is applied (e.g. a text-line classifier that
    halves only the height): layers still correspond neuron for neuron, each task keeps its own."""
    from onnxzip.graph.align import align
    a = build_ir(_se_net(0, constant_nodes=False), "a", "a.onnx", 17)
    b = build_ir(_se_net(1, constant_nodes=False, stride=(2, 1)), "b", "b.onnx", 17)
    a, b = align([a, b])
    assert a.layers[0].attr("strides") == (1, 1) and b.layers[0].attr("strides") == (2, 1)


def channels_last_cnn(seed: int, also_output: bool = False) -> onnx.ModelProto:
    """Conv (3 -> 4 channels, 5x5 map) -> Transpose to NHWC -> Reshape (N, 100) -> MatMul + Add -> Relu
    -> MatMul: a Keras Flatten as tf2onnx exports it. ``also_output``: the flattened tensor is also a
    graph output (then its element order is part of the contract)."""
    rng = np.random.default_rng(seed)
    inits = [helper.make_tensor(n, onnx.TensorProto.FLOAT, a.shape, a.reshape(-1)) for n, a in (
        ("w", rng.normal(size=(4, 3, 3, 3)).astype(np.float32)), ("b", rng.normal(size=4).astype(np.float32)),
        ("d", rng.normal(size=(100, 6)).astype(np.float32) / 10), ("db", rng.normal(size=6).astype(np.float32)),
        ("h", rng.normal(size=(6, 3)).astype(np.float32)))]
    inits.append(helper.make_tensor("target", onnx.TensorProto.INT64, [2], [-1, 100]))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "target"], ["f"]),
             helper.make_node("MatMul", ["f", "d"], ["m"]), helper.make_node("Add", ["m", "db"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "h"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])]
    if also_output:
        outputs.append(helper.make_tensor_value_info("f", onnx.TensorProto.FLOAT, ["N", 100]))
    graph = helper.make_graph(nodes, "keras_like", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                                    ["N", 3, 5, 5])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_channels_last_flatten_becomes_channel_major_with_the_dense_columns_moved():
    """The model's outputs are unchanged (ONNX Runtime, before and after), the Transpose is gone, and
    the dense layer's weight columns are the file's permuted: column c*25 + s of the new weight is
    column s*4 + c of the old one (checked element by element against the file's MatMul weight)."""
    m = channels_last_cnn(0)
    x = graphs.data(5, (3, 5, 5))
    ir = normalized_matches(m, x, opset=13)
    ops = [n.op for n in ir.graph.nodes]
    assert "Transpose" not in ops and ops.count("Flatten") == 1
    dense = next(n for n in ir.graph.nodes if n.op == "Gemm" and n.inputs[1].values.shape == (6, 100))
    assert dense.inputs[0] is next(n for n in ir.graph.nodes if n.op == "Flatten").outputs[0]
    old = onnx.numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "d"))  # (in, out)
    new = dense.inputs[1].values  # (out, in)
    for c in range(4):
        for s in range(25):
            np.testing.assert_array_equal(new[:, c * 25 + s], old[s * 4 + c])
    assert not ir.spaces.restore  # the channel space reaches the dense layer


def test_a_channels_last_flatten_that_is_also_an_output_is_kept():
    ir = normalized_matches(channels_last_cnn(1, also_output=True), graphs.data(6, (3, 5, 5)), opset=13)
    assert "Transpose" in [n.op for n in ir.graph.nodes]
