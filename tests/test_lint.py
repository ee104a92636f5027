"""The deployment lint finds each kind of problem in a model built to have it."""
import graphs
import numpy as np
from onnx import helper, numpy_helper

from onnxzip.graph.lint import deployment_problems


def test_a_clean_model_passes():
    assert deployment_problems(graphs.mlp(0)) == []


def test_each_problem_is_named():
    m = graphs.mlp(0)
    m.opset_import[0].version = 21
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "F"  # a second dynamic dim
    m.graph.node.append(helper.make_node("Constant", [], ["k"], name="konst",
                                         value=numpy_helper.from_array(np.ones(3, np.float32))))
    m.graph.initializer.extend([numpy_helper.from_array(np.ones(3, np.float32), "c1"),
                                numpy_helper.from_array(np.ones(3, np.float32), "c2")])
    m.graph.node.append(helper.make_node("Add", ["c1", "c2"], ["c3"], name="folded"))
    m.graph.node.append(helper.make_node("Gemm", ["x", "x", "c3"], ["g"], name="computed_weight"))
    m.graph.node.append(helper.make_node("Foo", ["x"], ["f"], name="contrib", domain="com.microsoft"))
    m.graph.initializer.extend([numpy_helper.from_array(np.asarray(0.5, np.float32), "ratio"),
                                numpy_helper.from_array(np.asarray(True), "on")])
    m.graph.node.append(helper.make_node("Dropout", ["x", "ratio", "on"], ["d"], name="train"))  # opset 12+: an input
    text = "\n".join(deployment_problems(m))
    for what in ("opset 21", "'x': dynamic dimension(s) [1]", "konst", "folded", "computed_weight", "com.microsoft",
                 "training_mode"):
        assert what in text, what


def test_token_ids_may_keep_a_dynamic_sequence():
    m = graphs.mlp(0)
    m.graph.input.append(helper.make_tensor_value_info("ids", 7, ["N", "T"]))  # int64
    assert deployment_problems(m) == []
