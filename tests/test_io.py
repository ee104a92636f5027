import sys

import graphs
import numpy as np
import onnx
import pytest

from onnxzip import UsageError, zip_models
from onnxzip.calibrate.runtime import onnxruntime, session
from onnxzip.graph.io import InputSpec, load_calibration, load_model, save_model


def test_external_data_models_load_and_zip(tmp_path):
    paths = []
    for seed in (1, 2):
        path = tmp_path / f"m{seed}.onnx"
        onnx.save_model(graphs.mlp(seed, sizes=(12, 300, 40, 3)), str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=f"m{seed}.data", size_threshold=0)
        paths.append(path)
    assert (tmp_path / "m1.data").stat().st_size > 12 * 300 * 4
    m = load_model(paths[0])
    assert onnx.numpy_helper.to_array(m.graph.initializer[0]).size > 0
    data = [{"x": graphs.data(3, (12,))}, {"x": graphs.data(4, (12,))}]
    result = zip_models(paths, data, share=0.0, quiet=True)
    assert result.report["equivalence_max_abs_diff"] <= 1e-5
    assert all(t["max_abs_diff"] <= 1e-5 for t in result.report["tasks"])


def test_save_is_atomic(tmp_path):
    path = tmp_path / "out.onnx"
    save_model(graphs.mlp(0), path)
    save_model(graphs.mlp(1), path)  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]
    assert load_model(path).graph.node[0].op_type == "Gemm"


def test_saved_zip_leaves_inner_shapes_out_and_still_runs(tmp_path):
    data = [{"x": graphs.data(3, (12,))}, {"x": graphs.data(4, (12,))}]
    result = zip_models([graphs.mlp(1), graphs.mlp(2)], data, share=0.5, quiet=True)
    assert len(result.model.graph.value_info) > 0  # (inferred while zipping)
    before = result.model.SerializeToString()
    path = tmp_path / "z.onnx"
    result.save(path)
    assert result.model.SerializeToString() == before  # (the model in memory is as it was)
    written = onnx.load(str(path))
    assert len(written.graph.value_info) == 0 and path.stat().st_size < len(before)
    sess = session(written)
    feeds = result.inputs_for(0, data[0])
    want = session(result.model).run(None, feeds)
    for got, ref in zip(sess.run(None, feeds), want):
        np.testing.assert_array_equal(got, ref)


def test_npy_serves_a_single_input(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 4), np.float64))
    spec = InputSpec("x", np.dtype(np.float32), (None, 4))
    arrays = load_calibration(tmp_path / "x.npy", [spec])
    assert arrays["x"].dtype == np.float32 and arrays["x"].shape == (3, 4)


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UsageError, match=r"onnxzip\[cpu\]"):
        onnxruntime()


def test_cuda_request_without_cuda_build_is_an_error():
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(UsageError, match="CUDAExecutionProvider"):
        session(graphs.mlp(0), "cuda")


def test_saved_file_has_the_usual_permissions(tmp_path):
    import os
    path = tmp_path / "out.onnx"
    save_model(graphs.mlp(0), path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_pruned_model_keeps_only_what_its_outputs_need():
    from onnx import TensorProto, helper, numpy_helper

    from onnxzip.graph.io import pruned
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), n) for n in ("wa", "wb")]
    nodes = [helper.make_node("MatMul", ["x", "wa"], ["ha"]), helper.make_node("Relu", ["ha"], ["a"]),
             helper.make_node("MatMul", ["y", "wb"], ["b"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 4])
                                           for n in ("x", "y")],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 4]) for n in ("a", "b")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    part = pruned(model, ["a"])
    onnx.checker.check_model(part)
    assert [n.output[0] for n in part.graph.node] == ["ha", "a"]
    assert [t.name for t in part.graph.initializer] == ["wa"] and [i.name for i in part.graph.input] == ["x"]
    x = rng.standard_normal((3, 4)).astype(np.float32)
    got = session(part).run(["a"], {"x": x})[0]
    np.testing.assert_allclose(got, np.maximum(x @ numpy_helper.to_array(inits[0]), 0), rtol=1e-6)
    assert len(model.graph.node) == 3  # the input is left as it was
