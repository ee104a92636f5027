"""The emitted model against a forward pass built by hand from the plan's weights.

``LayerZip.weights[t]`` (n, d + 1) holds task t's layer in zipped order: row r is the task's
original neuron ``rows[t][r]``, column j its original column ``cols[t][j]`` (``d``: the bias), and
the first ``shared`` rows agree across tasks on the first ``ns`` columns. Here each task's layer is
put back in its own neuron order by hand and run through a numpy forward pass (numpy's own conv,
pooling and flatten); onnxruntime on the emitted graph must give the same outputs, and the graph
must store the shared block once.
"""
import graphs
import numpy as np
import pytest
from onnx import numpy_helper

import onnxzip


def task_layer(z, t):
    """Task ``t``'s layer as (n, d + 1) in its original row and column order (bias last)."""
    w = z.weights[t]
    full = np.full(w.shape, np.nan)
    for r, orig_row in enumerate(z.rows[t]):
        for j, orig_col in enumerate(z.cols[t]):
            full[orig_row, orig_col] = w[r, j]
    assert not np.isnan(full).any()  # rows and cols are permutations
    return full


def dense(x, m):
    return x @ m[:, :-1].T + m[:, -1]


def relu(x):
    return np.maximum(x, 0.0)


def conv3x3(x, m, c_in):
    """Conv 3x3, pads 1, stride 1, from a (n, c_in * 9 + 1) matrix (channel-major, offsets inner)."""
    w, b = m[:, :-1].reshape(-1, c_in, 3, 3), m[:, -1]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, wd = x.shape[2:]
    y = np.zeros((x.shape[0], w.shape[0], h, wd))
    for di in range(3):
        for dj in range(3):
            y += np.einsum("nchw,oc->nohw", xp[:, :, di:di + h, dj:dj + wd], w[:, :, di, dj])
    return y + b[None, :, None, None]


def maxpool2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def mlp_forward(layers, x):
    h = relu(dense(x, layers[0]))
    h = relu(dense(h, layers[1]))
    return dense(h, layers[2])


def cnn_forward(layers, x, channels=(3, 6)):
    h = maxpool2(relu(conv3x3(x, layers[0], channels[0])))
    h = maxpool2(relu(conv3x3(h, layers[1], channels[1])))
    h = relu(dense(h.reshape(h.shape[0], -1), layers[2]))
    return dense(h, layers[3])


def run_all(model, feeds):
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def initializers(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def copies_of(block, inits):
    """The initializers holding ``block`` (float32, any reshape of the same values), alone or as a
    run of rows among others' (stacked weights)."""
    want = block.astype(np.float32)
    rows = want.reshape(want.shape[0], -1)
    found = []
    for n, a in inits.items():
        if a.dtype != np.float32 or a.ndim < 1 or a.size % max(rows.size, 1) or a.shape[0] < rows.shape[0] or \
                a.size // a.shape[0] != rows.shape[1]:
            continue
        flat = a.reshape(a.shape[0], -1)
        found += [n for r in range(flat.shape[0] - rows.shape[0] + 1) if np.array_equal(flat[r:r + rows.shape[0]], rows)]
    return found


MLP = dict(sizes=(12, 16, 10, 3), shared=(8, 5))  # graphs.mlp; 0.5 of 16 and 10 hidden neurons


@pytest.fixture(scope="module")
def mlp_zip():
    models = [graphs.mlp(1), graphs.mlp(2)]
    data = [{"x": graphs.data(3, (12,))}, {"x": graphs.data(4, (12,))}]
    return models, onnxzip.zip_models(models, data, share=0.5, names=("a", "b"), quiet=True)


@pytest.mark.parametrize("build,forward,shape,n_layers", [(graphs.mlp, mlp_forward, (12,), 3),
                                                       (graphs.cnn, cnn_forward, (3, 8, 8), 4)])
def test_hand_forward_reads_the_layout_right_on_an_unshared_zip(build, forward, shape, n_layers):
    """Check the oracle itself: with nothing shared, the hand forward from the plan's weights is
    the original model (BN and all) in ORT."""
    models = [build(1), build(2)]
    data = [{"x": graphs.data(3, shape)}, {"x": graphs.data(4, shape)}]
    result = onnxzip.zip_models(models, data, share=0.0, names=("a", "b"), quiet=True, recover=False)
    x = graphs.data(9, shape, n=10)
    for t, m in enumerate(models):
        layers = [task_layer(result.plan.layers[i], t) for i in range(n_layers)]
        want = graphs.run(m, {"x": x})
        np.testing.assert_allclose(forward(layers, x.astype(np.float64)), want, rtol=1e-5,
                                   atol=1e-5 * np.abs(want).max())


def test_mlp_emitted_graph_computes_each_tasks_hand_built_network(mlp_zip):
    _, result = mlp_zip
    plan = result.plan
    assert [plan.layers[i].shared for i in (0, 1)] == list(MLP["shared"])
    x = graphs.data(9, (12,), n=20)
    outs = run_all(result.model, {"x": x})
    hand = []
    for t, name in enumerate(("a", "b")):
        layers = [task_layer(plan.layers[i], t) for i in range(3)]
        hand.append(mlp_forward(layers, x.astype(np.float64)))
        np.testing.assert_allclose(outs[f"{name}/y"], hand[-1], rtol=1e-5, atol=1e-5 * np.abs(hand[-1]).max())
    assert np.abs(hand[0] - hand[1]).max() > 1e-2  # two different tasks, not one output twice


def test_mlp_shared_blocks_are_stored_once_and_parameters_count_by_hand(mlp_zip):
    _, result = mlp_zip
    plan, inits = result.plan, initializers(result.model)
    for i, k in zip((0, 1), MLP["shared"]):
        z = plan.layers[i]
        block = z.weights[0][:k, :z.ns - 1]  # shared rows x shared input columns (bias apart)
        np.testing.assert_array_equal(block, z.weights[1][:k, :z.ns - 1])
        assert len(copies_of(block, inits)) == 1, f"layer {i}: the shared block is not stored exactly once"
        assert len(copies_of(z.weights[0][:k, z.ns - 1], inits)) == 1  # the shared bias too
    # hand count, (12, 16, 10, 3) with 8 and 5 shared neurons, two tasks:
    fc0 = 8 * (12 + 1) + 2 * 8 * (12 + 1)  # shared rows once, the private rows per task
    fc1 = 5 * (8 + 1) + 2 * (5 * 8 + 5 * (16 + 1))  # shared x shared once; shared rows x private inputs
    head = 2 * 3 * (10 + 1)  # and the private rows per task; heads private
    assert sum(a.size for a in inits.values() if a.dtype.kind == "f") == fc0 + fc1 + head == 673
    originals = 2 * (16 * 13 + 10 * 17 + 3 * 11)
    assert originals - (fc0 + fc1 + head) == 8 * 13 + 5 * 9  # saved: one copy of each shared block


def test_cnn_emitted_graph_computes_each_tasks_hand_built_network():
    models = [graphs.cnn(1), graphs.cnn(2)]  # BN after each conv: folded into it
    data = [{"x": graphs.data(3, (3, 8, 8))}, {"x": graphs.data(4, (3, 8, 8))}]
    result = onnxzip.zip_models(models, data, share=0.5, names=("a", "b"), quiet=True)
    plan, inits = result.plan, initializers(result.model)
    assert [plan.layers[i].shared for i in range(4)] == [3, 4, 5, 0]
    x = graphs.data(9, (3, 8, 8), n=10)
    outs = run_all(result.model, {"x": x})
    for t, name in enumerate(("a", "b")):
        layers = [task_layer(plan.layers[i], t) for i in range(4)]
        want = cnn_forward(layers, x.astype(np.float64))
        np.testing.assert_allclose(outs[f"{name}/y"], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    for i in range(3):
        z = plan.layers[i]
        assert len(copies_of(z.weights[0][:z.shared, :z.ns - 1], inits)) == 1
    # hand count: conv0 6x(3*9) with 3 shared; conv1 8x(6*9) with 4 shared on 3 shared input
    # channels; fc0 10x(8*2*2) with 5 shared on 4 shared channels (16 features); head 4x10
    conv0 = 3 * 28 + 2 * 3 * 28
    conv1 = 4 * (3 * 9 + 1) + 2 * (4 * 3 * 9 + 4 * (6 * 9 + 1))
    fc0 = 5 * (16 + 1) + 2 * (5 * 16 + 5 * (32 + 1))
    head = 2 * 4 * 11
    assert sum(a.size for a in inits.values() if a.dtype.kind == "f") == conv0 + conv1 + fc0 + head


@pytest.mark.parametrize("allowzero", [0, 1])
def test_reshape_of_flattened_channels_per_part(allowzero):
    """Conv -> Flatten (16 features per channel) -> Reshape([4, 64, 1]) -> Flatten -> Gemm: each
    part's Reshape target counts its channels times their features (allowzero spells it out)."""
    from onnx import helper, numpy_helper

    def model(seed):
        r = np.random.default_rng(seed)
        inits = [numpy_helper.from_array(np.asarray(a, dt), n) for n, a, dt in (
            ("cw", r.normal(0, .3, (4, 3, 3, 3)), np.float32), ("cb", r.normal(0, .1, 4), np.float32),
            ("t", [4, 64, 1], np.int64), ("w1", r.normal(0, .2, (10, 64)), np.float32),
            ("b1", r.normal(0, .1, 10), np.float32), ("w2", r.normal(0, .3, (3, 10)), np.float32),
            ("b2", r.normal(0, .1, 3), np.float32))]
        nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c"], ["r"], name="relu"),
                 helper.make_node("Flatten", ["r"], ["f"], name="flat"),
                 helper.make_node("Reshape", ["f", "t"], ["f3"], name="rs", allowzero=allowzero),
                 helper.make_node("Flatten", ["f3"], ["f2"], name="flat2"),
                 helper.make_node("Gemm", ["f2", "w1", "b1"], ["h"], name="fc1", transB=1),
                 helper.make_node("Relu", ["h"], ["hr"], name="relu2"),
                 helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"], name="fc2", transB=1)]
        return graphs.model(nodes, inits, [graphs.inp("x", [4, 3, 4, 4])], [graphs.inp("y", [4, 3])])
    models = [model(1), model(2)]
    data = [{"x": graphs.data(s, (3, 4, 4), n=16)} for s in (3, 4)]
    for share in (0.0, 0.5):
        result = onnxzip.zip_models(models, data, share=share, quiet=True, names=("a", "b"))
        assert result.report["equivalence_max_abs_diff"] <= 1e-5


def test_sized_again_puts_the_calibration_sizes_back_and_keeps_the_outputs_where_inference_fails(monkeypatch):
    import onnx

    from onnxzip.emit import shapes
    from onnxzip.graph import io as gio
    model = graphs.resnet(1)
    dim = model.graph.input[0].type.tensor_type.shape.dim
    declared = [onnx.ValueInfoProto.FromString(o.SerializeToString()) for o in model.graph.output]
    sizes = {model.graph.input[0].name: {2: dim[2].dim_value, 3: dim[3].dim_value}}
    dim[2].dim_param, dim[3].dim_param = "H", "W"
    out = shapes.sized_again(model, (sizes, declared))
    assert [d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim[2:]] == list(sizes["x"].values())
    assert not any(d.dim_param for d in out.graph.input[0].type.tensor_type.shape.dim[2:])

    def fails(*args, **kwargs):
        raise RuntimeError("inference fails")

    monkeypatch.setattr(gio, "infer_shapes", fails)
    del model.graph.output[0].type.tensor_type.shape.dim[:]
    out = shapes.sized_again(model, (sizes, declared))
    assert out.graph.output[0] == declared[0]
