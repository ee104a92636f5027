"""Running a network stage by stage (onnxzip/calibrate/stages.py) against one whole run.

Oracle: the ORIGINAL model (as built in tests/graphs.py, before onnxzip normalizes it) run once in
ONNX Runtime with the tensors alive at every cut added as graph outputs (the normalized graph keeps
the original tensor names; BatchNorm folded into a conv writes the BN's output name). Substituted
weights and constants are checked against the original model with those values edited into its
initializers; the probe's (error, signal) against numpy sums over the two whole runs. Cut
structures (which tensors are alive where) are derived by hand from the graphs.
"""
import graphs
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxzip.calibrate.spool import Batches, Spool
from onnxzip.calibrate.stages import StagedNetwork
from onnxzip.graph.ir import build_ir

N, BATCH = 37, 16  # three batches: 16, 16 and a partial 5


def whole_run(m: onnx.ModelProto, feeds: dict, names: list[str]) -> dict[str, np.ndarray]:
    """``names`` from one ONNX Runtime run of ``m`` with them as extra graph outputs."""
    import onnxruntime as ort
    m = onnx.ModelProto.FromString(m.SerializeToString())
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, feeds)))


def close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-5) -> None:
    """float32 reality: the same arithmetic, possibly re-associated (BN folded, other batch sizes)."""
    scale = max(1.0, float(np.max(np.abs(want))))
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


def run_all(net: StagedNetwork, data: dict, spool: Spool | None = None, weights=None, constants=None) -> list[Batches]:
    """The tensors alive after every stage (stage 0 first)."""
    live, out = Batches.of(data, net.batch, spool), []
    for j in range(net.stages):
        live = net.run_stage(j, live, weights or {}, constants)
        out.append(live)
    return out


MODELS = {"mlp": (lambda: graphs.mlp(0), (12,)), "cnn": (lambda: graphs.cnn(1), (3, 8, 8)),
          "resnet": (lambda: graphs.resnet(2), (3, 8, 8)), "plain_bn": (lambda: graphs.plain_bn(3), (3, 8, 8))}


@pytest.mark.parametrize("every_layer", [False, True])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_stage_by_stage_equals_one_whole_run(name, every_layer):
    build, shape = MODELS[name]
    m = build()
    ir = build_ir(m, "a", "a.onnx", 17)
    cuts = list(range(len(ir.layers))) if every_layer else ir.hidden
    net = StagedNetwork(ir, cuts, batch=BATCH)
    assert net.batch == BATCH and net.stages == len(cuts) + 1
    x = graphs.data(5, shape, n=N)
    stages = run_all(net, {"x": x})
    names = sorted({n for j in range(1, net.stages + 1) for n in net.live[j]} - {"x"})
    want = whole_run(m, {"x": x}, names)
    for j, live in enumerate(stages):
        assert live.sizes == [16, 16, 5] and sorted(live.names) == sorted(net.live[j + 1])
        for t in net.live[j + 1]:
            close(live.array(t), x if t == "x" else want[t])
    close(stages[-1].array("y"), graphs.run(m, {"x": x}))  # the graph output itself, once more


def test_live_tensors_at_the_cuts_of_a_residual_net():
    """resnet: stem(0) relu b1c1(2) relu b1c2(4) add relu b2c1(7) b2proj(8) relu b2c2(10) add relu gap
    flatten head(15). Alive before b1c2: its input and the skip; before b2proj: its input relu5 and
    b2c1's output bn6 (not yet used); before b2c2: bn6.r and the projection's bn8."""
    ir = build_ir(graphs.resnet(2), "a", "a.onnx", 17)
    assert [layer.name for layer in ir.layers] == ["stem", "b1c1", "b1c2", "b2c1", "b2proj", "b2c2", "head"]
    net = StagedNetwork(ir, list(range(7)))
    assert net.bounds == [0, 0, 2, 4, 7, 8, 10, 15, 16]
    assert net.live == [["x"], ["x"], ["bn1.r"], ["bn1.r", "bn2.r"], ["relu5"], ["bn6", "relu5"], ["bn6.r", "bn8"],
                        ["flatten12"], ["y"]]
    assert net.stages == 8
    assert [net.produced(j) for j in range(8)] == [[], ["bn1.r"], ["bn2.r"], ["relu5"], ["bn6"], ["bn6.r", "bn8"],
                                                   ["flatten12"], ["y"]]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_node_runs_in_exactly_one_stage(name):
    ir = build_ir(MODELS[name][0](), "a", "a.onnx", 17)
    net = StagedNetwork(ir, list(range(len(ir.layers))))
    seen = []
    for j in range(net.stages):
        m = net.stage_model(j, {})
        if m is None:
            assert net.bounds[j] == net.bounds[j + 1]
            continue
        seen += [n.name for n in m.graph.node]
        assert {i.name for i in m.graph.input} <= set(net.live[j])
        assert [o.name for o in m.graph.output] == net.produced(j)
    assert sorted(seen) == sorted(n.name for n in ir.graph.nodes)  # each node once, none lost


def test_an_empty_stage_carries_its_tensors_without_copying():
    """Cut twice before the same layer: the stage between the cuts has no node; the first stage
    (before the first layer) is empty as well. Both pass their batches through as the same arrays."""
    ir = build_ir(graphs.mlp(0), "a", "a.onnx", 17)
    net = StagedNetwork(ir, [0, 1, 1], batch=BATCH)
    assert net.bounds == [0, 0, 2, 2, 5] and net.stage_model(0, {}) is None and net.stage_model(2, {}) is None
    x = graphs.data(6, (12,), n=N)
    src = Batches.of({"x": x}, net.batch)
    after0 = net.run_stage(0, src, {})
    after1 = net.run_stage(1, after0, {})
    after2 = net.run_stage(2, after1, {})
    for i in range(3):
        assert after0.raw(i)["x"] is src.raw(i)["x"]
        assert after2.raw(i)["h0_r"] is after1.raw(i)["h0_r"]
    y = net.run_stage(3, after2, {}).array("y")
    close(y, graphs.run(graphs.mlp(0), {"x": x}))


def test_spooled_to_disk_gives_the_same_tensors():
    m = graphs.cnn(1)
    ir = build_ir(m, "a", "a.onnx", 17)
    net = StagedNetwork(ir, ir.hidden, batch=BATCH)
    x = graphs.data(7, (3, 8, 8), n=N)
    in_memory = run_all(net, {"x": x})
    with Spool(memory=0) as spool:  # every batch a stage makes goes to a .npy file
        on_disk = run_all(net, {"x": x}, spool)
        assert spool.peak_disk > 0
        for a, b, j in zip(in_memory, on_disk, range(net.stages)):
            for t in net.live[j + 1]:
                np.testing.assert_array_equal(b.array(t), a.array(t))
        close(on_disk[-1].array("y"), graphs.run(m, {"x": x}))


def test_a_fixed_batch_model_pads_its_last_partial_batch():
    """Input (4, 3, 8, 8): stages run 4 samples at a time whatever batch is asked; 10 samples are
    4 + 4 + 2, the last padded to 4 and cut back. Oracle: the same weights with a dynamic batch."""
    dynamic = graphs.cnn(4)
    fixed = onnx.ModelProto.FromString(dynamic.SerializeToString())
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    ir = build_ir(fixed, "a", "a.onnx", 17)
    assert ir.fixed_batch == 4
    net = StagedNetwork(ir, ir.hidden, batch=BATCH)
    assert net.batch == 4
    x = graphs.data(8, (3, 8, 8), n=10)
    stages = run_all(net, {"x": x})
    assert stages[-1].sizes == [4, 4, 2]
    want = whole_run(dynamic, {"x": x}, ["p0", "flat", "f0r", "y"])
    for j, live in enumerate(stages):
        for t in net.live[j + 1]:
            close(live.array(t), x if t == "x" else want[t])


def test_stream_yields_tensors_made_inside_a_stage():
    """Extra outputs (a pre-activation in the middle of a stage) come batch by batch, as asked."""
    m = graphs.mlp(0)
    ir = build_ir(m, "a", "a.onnx", 17)
    net = StagedNetwork(ir, ir.hidden, batch=BATCH)  # stage 2: fc1, relu1, fc2
    x = graphs.data(9, (12,), n=N)
    live = run_all(net, {"x": x})[1]
    got = list(net.stream(2, live, {}, None, ["h1", "y"]))
    assert [sorted(g) for g in got] == [["h1", "y"]] * 3 and [g["h1"].shape[0] for g in got] == [16, 16, 5]
    want = whole_run(m, {"x": x}, ["h1", "y"])
    close(np.concatenate([g["h1"] for g in got]), want["h1"])
    close(np.concatenate([g["y"] for g in got]), want["y"])


#: (model, layer, its weight and bias initializers in the ORIGINAL model, probe positions per sample)
EDITS = {"mlp": (lambda: graphs.mlp(0), (12,), "fc1", ("w1", "b1"), 1),
         "cnn": (lambda: graphs.cnn(1, bn=False), (3, 8, 8), "conv1", ("cw1", "cb1"), 16)}


@pytest.mark.parametrize("name", sorted(EDITS))
def test_run_pair_with_substituted_weights_equals_the_model_with_them_edited_in(name):
    build, shape, layer_name, (w_name, b_name), positions = EDITS[name]
    m = build()
    ir = build_ir(m, "a", "a.onnx", 17)
    li = next(i for i, layer in enumerate(ir.layers) if layer.name == layer_name)
    layer = ir.layers[li]
    cuts = list(range(len(ir.layers)))  # every layer, heads too (as zipping with recovery cuts)
    net = StagedNetwork(ir, cuts, batch=BATCH)
    j = cuts.index(li) + 1  # the stage that starts at the layer
    rng = np.random.default_rng(10)
    w = rng.normal(0, 0.3, layer.shape).astype(np.float32)
    b = rng.normal(0, 0.1, layer.neurons).astype(np.float32)
    x = graphs.data(11, shape, n=N)

    live = Batches.of({"x": x}, net.batch)
    for s in range(j):
        live = net.run_stage(s, live, {})
    ref, zipped, measured = net.run_pair(j, live, live, {li: (w, b)}, None, layer.output, layer.neurons)
    for s in range(j + 1, net.stages):  # both networks on to the outputs
        ref, zipped, _ = net.run_pair(s, ref, zipped, {li: (w, b)}, None)

    names = [layer.output, "y"]
    original = whole_run(m, {"x": x}, names)
    changed = whole_run(graphs.edited(m, {w_name: w, b_name: b}), {"x": x}, names)
    assert not np.allclose(changed["y"], original["y"], atol=1e-3)  # (the edit matters)
    close(ref.array("y"), original["y"])
    close(zipped.array("y"), changed["y"])
    d, o = changed[layer.output].astype(np.float64) - original[layer.output], original[layer.output].astype(np.float64)
    assert d[0].size == positions * layer.neurons
    err, sig = np.sum(d * d) / (N * positions), np.sum(o * o) / (N * positions)
    assert measured[0] == pytest.approx(err, rel=1e-4) and measured[1] == pytest.approx(sig, rel=1e-4)


def test_run_pair_without_a_zipped_network_reuses_the_original_run():
    ir = build_ir(graphs.mlp(0), "a", "a.onnx", 17)
    net = StagedNetwork(ir, ir.hidden, batch=BATCH)
    live = net.run_stage(0, Batches.of({"x": graphs.data(12, (12,), n=N)}, net.batch), {})
    ref, zipped, measured = net.run_pair(1, live, None, {}, None, "h0", 16)
    assert zipped is ref and measured[0] == 0.0 and measured[1] > 0
    _, _, none = net.run_pair(1, live, live, {}, None)  # no probe: nothing measured
    assert none is None


def test_substituted_constants_equal_the_model_with_them_edited_in():
    """plain_bn keeps its BatchNormalizations (after the ReLU): replace one's running mean and
    variance for the stage that holds it."""
    m = graphs.plain_bn(3)
    ir = build_ir(m, "a", "a.onnx", 17)
    net = StagedNetwork(ir, ir.hidden, batch=BATCH)
    bn = next(n for n in ir.graph.nodes if n.op == "BatchNormalization")
    mean, var = bn.inputs[3].name, bn.inputs[4].name
    inits = {i.name for i in m.graph.initializer}
    assert {mean, var} <= inits  # the same names as in the original file
    j = next(s for s in range(net.stages) if net.bounds[s] <= list(ir.graph.nodes).index(bn) < net.bounds[s + 1])
    assert [n.name for n in net.batchnorms(j, {bn.inputs[0].name: None})] == [bn.name]
    assert net.batchnorms(j, {}) == [] and net.batchnorms(j + 1, {bn.inputs[0].name: None}) == []
    rng = np.random.default_rng(13)
    values = {mean: rng.normal(0, 0.5, 8), var: rng.uniform(0.2, 3.0, 8)}
    x = graphs.data(14, (3, 8, 8), n=N)
    live = Batches.of({"x": x}, net.batch)
    for s in range(net.stages):
        live = net.run_stage(s, live, {}, values if s == j else None)
    close(live.array("y"), graphs.run(graphs.edited(m, values), {"x": x}))
    assert not np.allclose(live.array("y"), graphs.run(m, {"x": x}), atol=1e-3)
