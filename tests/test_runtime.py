"""Sessions: a user's file that ORT refuses is an input error; a graph onnxzip built is a bug."""
import graphs
import numpy as np
import onnx
import pytest
from onnx import helper

from onnxzip.calibrate import runtime
from onnxzip.errors import InputError, InternalError


def refused() -> onnx.ModelProto:
    """A well-formed protobuf that ORT cannot load: an op of an unknown domain."""
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.nowhere")
    return graphs.model([node], [], [graphs.inp("x", [1, 3])], [graphs.inp("y", [1, 3])])


def test_a_refused_user_model_is_an_input_error():
    with pytest.raises(InputError, match="onnxruntime cannot load the model"):
        runtime.session(refused())


def test_a_refused_built_graph_is_an_internal_error_with_the_whole_message():
    with pytest.raises(InternalError, match="a graph onnxzip built") as info:
        runtime.session(refused(), built=True)
    assert not isinstance(info.value, InputError) and info.value.__cause__ is not None


def test_fixed_batch_model_runs_any_number_of_samples():
    m = graphs.mlp(0)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 8
    free = graphs.mlp(0)
    x = graphs.data(1, (12,), n=13)
    sess = runtime.session(m)
    assert runtime.fixed_batch(sess) == 8
    got = runtime.run(sess, {"x": x})
    want = runtime.run(runtime.session(free), {"x": x})
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)
