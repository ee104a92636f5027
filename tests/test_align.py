import graphs
import numpy as np
import pytest

from onnxzip.errors import MismatchError
from onnxzip.graph.align import align
from onnxzip.graph.ir import build_ir


def ir(m, name="t"):
    return build_ir(m, name, f"{name}.onnx", 17)


def test_same_architecture_aligns_layer_by_layer():
    a, b = align([ir(graphs.cnn(0), "a"), ir(graphs.cnn(1), "b")])
    assert [x.name for x in a.layers] == [x.name for x in b.layers]


def test_different_exporter_styles_of_one_architecture_align():
    a, b = align([ir(graphs.mlp(0, style="gemm"), "a"), ir(graphs.mlp(1, style="matmul"), "b")])
    assert [x.shape for x in a.layers] == [x.shape for x in b.layers]


def test_heads_may_have_different_class_counts():
    a, b = align([ir(graphs.cnn(0, classes=4), "a"), ir(graphs.cnn(1, classes=2), "b")])
    assert a.layers[-1].neurons == 4 and b.layers[-1].neurons == 2


def two_heads(seed, reverse):
    import numpy as np
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(size=(5, 4)).astype(np.float32), "w0"),
             numpy_helper.from_array(rng.normal(size=(3, 5)).astype(np.float32), "wa"),
             numpy_helper.from_array(rng.normal(size=(2, 5)).astype(np.float32), "wb")]
    heads = [helper.make_node("Gemm", ["h", "wa"], ["ya"], name="head_a", transB=1),
             helper.make_node("Gemm", ["h", "wb"], ["yb"], name="head_b", transB=1)]
    nodes = [helper.make_node("Gemm", ["x", "w0"], ["g"], name="fc0", transB=1),
             helper.make_node("Relu", ["g"], ["h"], name="relu")] + (heads[::-1] if reverse else heads)
    return graphs.model(nodes, inits, [graphs.inp("x", ["N", 4])], [graphs.inp("ya", ["N", 3]), graphs.inp("yb", ["N", 2])])


def test_node_order_does_not_matter():
    a, b = ir(two_heads(0, False), "a"), ir(two_heads(1, True), "b")
    assert [n.name for n in b.graph.nodes][2:] == ["head_b", "head_a"]
    a, b = align([a, b])
    assert [x.name for x in b.layers] == [x.name for x in a.layers] == ["fc0", "head_a", "head_b"]
    assert [x.shape for x in b.layers] == [(5, 4), (3, 5), (2, 5)]


def test_mismatch_names_the_first_differing_node():
    with pytest.raises(MismatchError, match=r"a.onnx node 'fc1' \(Gemm, weight \(10, 16\)\).*b.onnx node 'fc1' "
                                            r"\(Gemm, weight \(9, 16\)\)"):
        align([ir(graphs.mlp(0), "a"), ir(graphs.mlp(1, sizes=(12, 16, 9, 3)), "b")])


def test_mismatch_in_node_count():
    with pytest.raises(MismatchError, match="differ"):
        align([ir(graphs.mlp(0), "a"), ir(graphs.mlp(1, sizes=(12, 16, 10, 7, 3)), "b")])


def test_preprocessing_constants_are_data_not_architecture():
    """Two skl2onnx-style models whose Scalers hold different constants (and feed a layer that is
    not foldable into them: a ReLU in between) still align; another number of features does not."""
    from onnx import TensorProto, helper, numpy_helper

    def model(offset, width=4):
        nodes = [helper.make_node("Scaler", ["x"], ["s"], domain="ai.onnx.ml", name="scaler", offset=offset,
                                  scale=[2.0] * width),
                 helper.make_node("Relu", ["s"], ["r"], name="relu"),
                 helper.make_node("Gemm", ["r", "w", "b"], ["h"], name="fc", transB=1),
                 helper.make_node("Relu", ["h"], ["hr"], name="relu2"),
                 helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"], name="head", transB=1)]
        inits = [numpy_helper.from_array(np.ones((3, width), np.float32), "w"),
                 numpy_helper.from_array(np.zeros(3, np.float32), "b"),
                 numpy_helper.from_array(np.ones((1, 3), np.float32), "w2"),
                 numpy_helper.from_array(np.zeros(1, np.float32), "b2")]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
        m.ir_version = 8
        return build_ir(m, "t", f"{offset[0]}.onnx", 17)

    assert len(align([model([0.0, 1.0, 2.0, 3.0]), model([5.0, 6.0, 7.0, 8.0])])) == 2
    with pytest.raises(MismatchError):
        align([model([0.0, 1.0, 2.0, 3.0]), model([0.0, 1.0, 2.0], width=3)])
