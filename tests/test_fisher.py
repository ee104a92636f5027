"""Loss gradients through ONNX Runtime (onnx-ad), checked against a small vector-Jacobian oracle."""
import graphs
from conftest import SAMPLES
import numpy as np
import onnxruntime as ort
import pytest

from onnxzip.calibrate.fisher import _seed, gradient_model, neuron_fisher
from onnxzip.graph.ir import build_ir


def mlp_vjp(m, x, v):
    """dL/dz for the hidden layers of graphs.mlp, L = v . y, by hand."""
    w = {i.name: np.asarray(__import__("onnx").numpy_helper.to_array(i), np.float64) for i in m.graph.initializer}
    z0 = x @ w["w0"].T + w["b0"]
    h0 = np.maximum(z0, 0)
    z1 = h0 @ w["w1"].T + w["b1"]
    h1 = np.maximum(z1, 0)
    g1 = (v @ w["w2"]) * (z1 > 0)
    g0 = (g1 @ w["w1"]) * (z0 > 0)
    return g0, g1, h1 @ w["w2"].T + w["b2"]


@pytest.mark.parametrize("sizes", [(12, 16, 10, 3), (12, 90, 70, 3)])  # the second: weights past WEIGHT_INPUT_MIN
def test_reverse_graph_matches_the_vjp_oracle(sizes):
    m = graphs.mlp(3, sizes=sizes)
    ir = build_ir(m, "t", "t.onnx", 17)
    rev, grads, seeded = gradient_model(ir, ir.hidden, batch=5)
    sess = ort.InferenceSession(rev.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 12)).astype(np.float32)
    v = rng.normal(size=(5, 3)).astype(np.float32)
    feeds = {"x": x, f"adj_{seeded[0]}": v[..., None]}
    feeds.update({i.name: np.zeros((5, sizes[1] if "fc0" in i.name else sizes[2]), np.float32)
                  for i in sess.get_inputs() if i.name.startswith("onnxzip.delta/")})
    got = sess.run([grads[i] for i in ir.hidden] + [seeded[0]], feeds)
    g0, g1, y = mlp_vjp(m, x.astype(np.float64), v.astype(np.float64))
    np.testing.assert_allclose(got[2], y, atol=1e-4)
    np.testing.assert_allclose(got[0][..., 0], g0, atol=1e-4)
    np.testing.assert_allclose(got[1][..., 0], g1, atol=1e-4)


def test_transposes_of_unit_axes_become_reshapes_and_others_stay():
    from onnx import TensorProto, helper

    from onnxzip.calibrate.autodiff import unit_transposes_as_reshapes
    nodes = [helper.make_node("Transpose", ["x"], ["a"], perm=[2, 0, 1]),  # (2, 3, 1) -> (1, 2, 3): a reshape
             helper.make_node("Transpose", ["a"], ["b"], perm=[0, 2, 1])]  # (1, 2, 3) -> (1, 3, 2): moves data
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 1])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "ab"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert unit_transposes_as_reshapes(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Reshape", "Transpose"]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_sampled_label_seed_is_the_cross_entropy_gradient():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 4))
    s = _seed(logits, rng)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.allclose(s.sum(axis=1), 0) and np.all((s - p <= 1e-12) | np.isclose(s - p, -1))
    assert np.allclose((np.isclose(s - p, -1)).sum(axis=1), 1)  # exactly one sampled label per row


def test_fisher_is_positive_and_per_neuron():
    ir = build_ir(graphs.cnn(4), "t", "t.onnx", 17)
    f = neuron_fisher(ir, {"x": graphs.data(5, (3, 8, 8), n=37)}, ir.hidden, batch=8)
    assert [v.shape for v in f.values()] == [(6,), (8,), (10,)]
    assert all(np.all(v >= 0) and np.any(v > 0) for v in f.values())


def _resize_net(seed: int, opset: int):
    """graphs.shape_ops (Pad, nearest Resize with no roi, Transpose between convs) at ``opset``,
    spelled as that opset wants: roi "" (13+), an empty roi tensor (11, 12)."""
    from onnx import numpy_helper
    m = graphs.shape_ops(seed)
    m.opset_import[0].version = opset
    resize = next(n for n in m.graph.node if n.op_type == "Resize")
    if opset < 13:
        m.graph.initializer.append(numpy_helper.from_array(np.zeros(0, np.float32), "roi"))
        resize.input[1] = "roi"
    return m


def test_empty_optional_inputs_survive_every_graph():
    """Resize's unused roi given as "" stays "" in the normalized graph, the stage models, the
    gradient model and the zipped model."""
    from onnxzip import zip_models
    from onnxzip.calibrate.stages import StagedNetwork

    def resizes(model):
        return [list(n.input) for n in model.graph.node if n.op_type == "Resize"]

    m = _resize_net(0, 17)
    ir = build_ir(m, "t", "t.onnx", 17)
    assert [r[1] for r in resizes(ir.to_onnx())] == [""]
    net = StagedNetwork(ir, ir.hidden)
    stages = [net.stage_model(j, {}) for j in range(net.stages)]
    assert [r[1] for s in stages if s is not None for r in resizes(s)] == [""]
    rev, _, _ = gradient_model(ir, ir.hidden, batch=4)
    assert all(r[1] == "" for r in resizes(rev)) and len(resizes(rev)) >= 1
    ort.InferenceSession(rev.SerializeToString(), providers=["CPUExecutionProvider"])
    x = {"x": graphs.data(6, (3, 8, 8), n=16)}
    zipped = zip_models([m, _resize_net(1, 17)], [x, x], share=0.5, quiet=True).model
    assert [r[1] for r in resizes(zipped)] and all(r[1] == "" for r in resizes(zipped))


def test_reverse_resize_before_opset_13_gets_the_inputs_its_opset_requires():
    """onnx-ad probes Resize with roi "" (opset 13's spelling): before 13 roi is required (an empty
    tensor); the gradients equal those at opset 17."""
    x = {"x": graphs.data(7, (3, 8, 8), n=10)}
    ref_ir = build_ir(_resize_net(2, 17), "t", "t.onnx", 17)
    ref = neuron_fisher(ref_ir, x, ref_ir.hidden, batch=5)
    for opset in (12, 11):
        ir = build_ir(_resize_net(2, opset), "t", "t.onnx", opset)
        rev, _, _ = gradient_model(ir, ir.hidden, batch=5)
        for node in rev.graph.node:
            if node.op_type == "Resize":
                assert "" not in list(node.input)[:3]
        got = neuron_fisher(ir, x, ir.hidden, batch=5)
        for i in ref:
            np.testing.assert_allclose(got[i], ref[i], rtol=1e-4, atol=1e-9)


def test_wrongly_declared_output_rank_does_not_break_gradients():
    """An output declared as rank 0 (an exporter's slip) gets its real rank back in normalization, so
    the seed input of the reverse graph has the output's rank (+ the seed axis)."""
    m = graphs.cnn(8)
    m.graph.output[0].type.tensor_type.shape.ClearField("dim")
    ir = build_ir(m, "t", "t.onnx", 17)
    f = neuron_fisher(ir, {"x": graphs.data(9, (3, 8, 8), n=12)}, ir.hidden, batch=4)
    assert all(np.all(v >= 0) and np.any(v > 0) for v in f.values())


def test_saturated_detector_is_seeded_at_its_logit():
    """A Sigmoid output that is 0 or 1 everywhere would make every neuron look free; its statistic is
    taken at the logit: the same numbers as the network without the Sigmoid (the oracle), and far
    from zero although the scores are saturated."""
    import onnx
    m = graphs.mlp(3, sizes=(12, 16, 10, 1))  # one score: the oracle's seed is the random projection too
    for init in m.graph.initializer:
        if init.name in ("w2", "b2"):  # a head so large that the scores saturate
            init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 300.0, init.name))
    with_sigmoid = onnx.ModelProto()
    with_sigmoid.CopyFrom(m)
    out = next(n for n in with_sigmoid.graph.node if n.output[0] == "y")
    out.output[0] = "logit"
    with_sigmoid.graph.node.append(onnx.helper.make_node("Sigmoid", ["logit"], ["y"], name="score"))
    x = {"x": np.random.default_rng(1).normal(size=(40, 12)).astype(np.float32)}
    scores = graphs.run(with_sigmoid, x)
    assert np.mean((scores < 1e-3) | (scores > 1 - 1e-3)) > 0.9  # saturated
    ir_s, ir_l = build_ir(with_sigmoid, "s", "s.onnx", 17), build_ir(m, "l", "l.onnx", 17)
    got, oracle = neuron_fisher(ir_s, x, ir_s.hidden), neuron_fisher(ir_l, x, ir_l.hidden)
    for i in ir_s.hidden:
        np.testing.assert_allclose(got[i], oracle[i], rtol=1e-5)
        assert got[i].mean() > 1.0


def test_loss_statistics_fall_back_only_where_onnx_ad_lacks_a_rule(monkeypatch, caplog):
    import onnx_ad

    from onnxzip.calibrate import fisher
    irs = [build_ir(graphs.mlp(s), f"t{s}", "t.onnx", 17) for s in (0, 1)]
    data = [{"x": graphs.data(s, (12,))} for s in (0, 1)]

    def unsupported(*args, **kwargs):
        raise onnx_ad.UnsupportedOperator("no reverse rule for Mystery")
    monkeypatch.setattr(fisher, "neuron_fisher", unsupported)
    assert fisher.loss_statistics(irs, data, None, "cpu") is None
    assert "no reverse rule for Mystery" in caplog.text

    def bug(*args, **kwargs):
        raise KeyError("a bug in onnxzip")
    monkeypatch.setattr(fisher, "neuron_fisher", bug)
    with pytest.raises(KeyError):
        fisher.loss_statistics(irs, data, None, "cpu")


def test_known_outputs_seed_the_reverse_pass_as_a_forward_run_would():
    from onnxzip.calibrate.runtime import run, session
    model = graphs.cnn(4)
    ir = build_ir(model, "t", "t.onnx", 17)
    x = {"x": graphs.data(5, (3, 8, 8), n=21)}
    outputs = run(session(model), x)
    ran = neuron_fisher(ir, x, ir.hidden, batch=8)
    seeded = neuron_fisher(ir, x, ir.hidden, batch=8, outputs=outputs)
    for i in ir.hidden:
        np.testing.assert_allclose(seeded[i], ran[i], rtol=1e-4)


def test_padding_repeats_real_samples():
    """The last batch is padded with repeats of real samples, not zeros: a model that divides by its
    input's norm is finite on them (0/0 on a zero sample made every statistic NaN)."""
    import onnx_graphsurgeon as gs
    from onnx import helper
    m = graphs.mlp(0, sizes=(12, 16, 10, 3))
    m.graph.node.insert(0, helper.make_node("ReduceL2", ["x"], ["nrm"], name="l2", axes=[1], keepdims=1))
    m.graph.node.insert(1, helper.make_node("Div", ["x", "nrm"], ["xn"], name="div"))
    for node in m.graph.node:
        if node.name == "fc0":
            node.input[0] = "xn"
        if node.name == "drop":
            node.input[0] = "sq"
    m.graph.node.append(helper.make_node("Mul", ["h0_r", "h0_r"], ["sq"], name="sq"))
    graph = gs.import_onnx(m)
    graph.toposort()
    m = gs.export_onnx(graph)
    ir = build_ir(m, "t", "t.onnx", 17)
    x = np.abs(graphs.data(0, (12,), n=40)) + 0.1
    f = neuron_fisher(ir, {"x": x}, [i for i in ir.hidden], batch=32)
    assert all(np.isfinite(v).all() and (v > 0).any() for v in f.values())


@pytest.mark.parametrize("opset", [17, 20])  # ReduceSumSquare's axes: an attribute, then an input (18 on)
def test_gradients_summed_in_the_graph_equal_numpy_sums_of_the_full_gradients(opset):
    """_summed_squares against its oracle: the same reverse graph's full gradients, summed in numpy."""
    import copy

    from onnxzip.calibrate.fisher import _summed_squares
    from onnxzip.graph.spaces import LAYER_AXIS
    x = graphs.data(3, (3, 8, 8), n=5)
    ir = build_ir(_resize_net(2, opset), "t", "t.onnx", opset)
    rev, grads, seeded = gradient_model(ir, ir.hidden, batch=5)
    full = ort.InferenceSession(copy.deepcopy(rev).SerializeToString(), providers=["CPUExecutionProvider"])
    sums = _summed_squares(rev, grads, opset)
    summed = ort.InferenceSession(rev.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feeds = {"x": x}
    for i in full.get_inputs():
        if i.name != "x":
            feeds[i.name] = rng.normal(size=[5 if not isinstance(d, int) else d for d in i.shape]).astype(np.float32) \
                if i.name.startswith("adj_") else np.zeros([5 if not isinstance(d, int) else d for d in i.shape], np.float32)
    got_full = full.run([grads[i] for i in ir.hidden], feeds)
    got = summed.run([sums[i] for i in ir.hidden], feeds)
    for g, s in zip(got_full, got):
        g = np.asarray(g, np.float64)
        want = (g ** 2).sum(axis=tuple(a for a in range(g.ndim) if a != LAYER_AXIS))
        assert s.shape == want.shape
        np.testing.assert_allclose(s, want, rtol=1e-5, atol=1e-30)
    assert not {o.name for o in rev.graph.output} & set(grads.values())


def test_the_reverse_batch_follows_measured_sample_bytes_and_never_passes_the_samples():
    """Shape inference left a transformer's run-time shapes open and counted 0.4 MB a sample, so a
    BERT-base pass ran 13 sequences padded to a batch of 32 (12 GB, 2.5x the time); the measured
    bytes bound the batch, which is never larger than the samples."""
    from onnxzip.calibrate.fisher import FISHER_BATCH_BYTES, fisher_sizes, sample_bytes
    from onnxzip.graph.ir import activation_bytes
    from onnxzip.tasks import load_tasks
    _, irs, arrays = load_tasks([SAMPLES / "bert_a.onnx"], ["a"], [SAMPLES / "calib_bert.npz"])
    measured = sample_bytes(irs[0], arrays[0])
    assert measured > activation_bytes(irs[0])  # (what inference sees of a run-time-shaped graph)
    assert fisher_sizes(irs[0], 5, 32, measured) == (5, 5)
    assert fisher_sizes(irs[0], 100, 32, FISHER_BATCH_BYTES // 4)[1] == 4
