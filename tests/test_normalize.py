import numpy as np
import onnx
import pytest
from onnx import helper

import graphs
from onnxzip.errors import InputError, UnsupportedOpError
from onnxzip.ir import build_ir


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
