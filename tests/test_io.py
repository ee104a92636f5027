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


def test_a_model_on_disk_reads_back_the_same_and_is_left_untouched():
    """io.on_disk writes each initializer over 1 KB to the data file at a 4 KB-aligned offset, from
    raw bytes or from typed fields (here a float_data weight and an int64 one), without touching the
    model (onnx's own writer moved the data out of the proto and back)."""
    from onnx import helper, numpy_helper

    from onnxzip.graph import io
    m = graphs.mlp(3, sizes=(12, 300, 40, 3))
    typed = helper.make_tensor("typed", onnx.TensorProto.FLOAT, [400], np.arange(400, dtype=np.float32).tolist())
    ints = numpy_helper.from_array(np.arange(300, dtype=np.int64), "ints")
    m.graph.initializer.extend([typed, ints])
    before = m.SerializeToString()
    with io.on_disk(m) as path:
        back = onnx.load(path)  # (the external data read back)
        assert m.SerializeToString() == before
        raw = onnx.load(path, load_external_data=False)
        offsets = [int(e.value) for t in raw.graph.initializer for e in t.external_data if e.key == "offset"]
        assert len(offsets) >= 3 and all(o % 4096 == 0 for o in offsets)
        want = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        for t in back.graph.initializer:
            np.testing.assert_array_equal(numpy_helper.to_array(t), want[t.name])
        x = graphs.data(1, (12,))
        got = session(path).run(None, {"x": x})[0]
        np.testing.assert_array_equal(got, session(m).run(None, {"x": x})[0])
