"""onnxzip.sharing.recover against independent oracles: numpy mean/var over whole arrays for the
batched moments; the original weights compared by hand for changes(); for restat_batchnorms, the
ORIGINAL graphs.plain_bn file (its BatchNormalizations follow the ReLU, so they are kept) with the
changed conv weights and the re-estimated BN statistics edited into its initializers, run whole in
ONNX Runtime: its BN outputs must have, channel by channel, the mean and variance of the unedited
model's BN outputs, and the statistics must solve those two moment equations (numpy, float64)."""
import graphs
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxzip.calibrate.spool import Batches
from onnxzip.calibrate.stages import StagedNetwork
from onnxzip.graph.ir import build_ir
from onnxzip.sharing.recover import changes, moments, restat_batchnorms

EPS = 1e-5  # graphs._Net's BatchNormalization epsilon (the ONNX default)


# ------------------------------------------------------------------ moments

def split(x: np.ndarray, sizes) -> list[np.ndarray]:
    return np.split(x, np.cumsum(sizes)[:-1])


def test_moments_over_several_batches_equal_numpy_over_the_whole_arrays():
    rng = np.random.default_rng(0)
    maps = (rng.normal(2.0, 3.0, (23, 4, 5, 3)) * rng.uniform(0.1, 4.0, (1, 4, 1, 1))).astype(np.float32)
    rows = (rng.normal(-1.0, 0.5, (23, 6)) + np.arange(6)).astype(np.float32)
    sizes = [8, 8, 5, 2]
    batches = [{"maps": m, "rows": r, "other": r} for m, r in zip(split(maps, sizes), split(rows, sizes))]
    got = moments(iter(batches), ["maps", "rows"])
    assert sorted(got) == ["maps", "rows"]
    for name, x, axes, per in (("maps", maps, (0, 2, 3), 23 * 5 * 3), ("rows", rows, (0,), 23)):
        mean, var, sums = got[name]
        x64 = x.astype(np.float64)
        assert mean.dtype == np.float64 and var.dtype == np.float64
        np.testing.assert_allclose(mean, x64.mean(axis=axes), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(var, x64.var(axis=axes), rtol=1e-9, atol=1e-12)
        assert sums.shape == (3, x.shape[1])
        np.testing.assert_allclose(sums[0], x64.sum(axis=axes), rtol=1e-12)
        np.testing.assert_allclose(sums[1], (x64 ** 2).sum(axis=axes), rtol=1e-12)
        np.testing.assert_array_equal(sums[2], np.full(x.shape[1], per))


def test_moments_of_a_constant_channel_is_zero_variance_never_negative():
    x = np.full((7, 3, 2, 2), 0.1, np.float32)
    x[:, 1] = 1e4 + 0.1  # catastrophic cancellation in E[x^2] - E[x]^2
    x[:, 2] = np.arange(7, dtype=np.float32)[:, None, None]
    mean, var, _ = moments([{"t": x[:3]}, {"t": x[3:]}], ["t"])["t"]
    np.testing.assert_allclose(mean, [0.1, 1e4 + 0.1, 3.0], rtol=1e-6)
    assert (var >= 0).all()
    np.testing.assert_allclose(var, [0.0, 0.0, 4.0], atol=1e-3)  # np.var(range(7)) = 4


def test_moments_of_no_batches_is_empty():
    assert moments([], ["t"]) == {}


# ------------------------------------------------------------------ changes

def test_changes_compares_the_zipped_weights_with_the_originals():
    ir = build_ir(graphs.plain_bn(3), "a", "a.onnx", 17)
    w, b = ir.weights(ir.layers[1])
    w, b = np.array(w), np.array(b)
    assert not changes(ir, 1, {1: (w.copy(), b.copy())})
    assert not changes(ir, 1, {1: (w.astype(np.float64), b.astype(np.float64))})  # same values
    w2 = w.copy()
    w2[3, 2, 1, 0] += 1e-3
    assert changes(ir, 1, {1: (w2, b)})
    b2 = b.copy()
    b2[-1] = -b2[-1]
    assert changes(ir, 1, {1: (w, b2)})
    assert changes(ir, 1, {1: (w[::-1].copy(), b[::-1].copy())})  # rows reordered


# ------------------------------------------------------------------ restat_batchnorms

N, BATCH = 40, 16  # three batches: 16, 16, 8


def whole_run(m: onnx.ModelProto, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """``names`` from one ONNX Runtime run of ``m`` with them as extra graph outputs (float64)."""
    import onnxruntime as ort
    m = onnx.ModelProto.FromString(m.SerializeToString())
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return {n: v.astype(np.float64) for n, v in zip(names, sess.run(names, {"x": x}))}


def restat(models, changed, xs):
    """Build each task's staged network (cut before c1 and c2), run it up to the stage of the BN
    after layer ``changed`` and re-estimate that BN with ``changed[t]`` (W, b or None) as task t's
    zipped layer. Returns the stage, the BN node names and the constants written per task."""
    irs = [build_ir(m, f"t{t}", f"t{t}.onnx", 17) for t, m in enumerate(models)]
    li, eff = changed
    nets = [StagedNetwork(ir, ir.hidden, batch=BATCH) for ir in irs]
    lives = []
    for net, x in zip(nets, xs):
        live = Batches.of({"x": x}, net.batch)
        for s in range(li + 1):  # stage s + 1 holds layer s and the BN after it
            live = net.run_stage(s, live, {})
        lives.append(live)
    j = li + 1
    bns = nets[0].batchnorms(j, irs[0].spaces.layout)
    effs = [{} if e is None else {li: e} for e in eff]
    constants = [{} for _ in models]
    restat_batchnorms(nets, irs, j, bns, lives, lives, effs, constants)
    return [n.name for n in bns], constants, irs


def bn_node(m: onnx.ModelProto, name: str):
    return next(n for n in m.graph.node if n.name == name)


def check_moments_restored(m, values, x, bn_name):
    """Oracle: the edited original model's BN output has the unedited one's per-channel moments, and
    the BN statistics written are the ones that solve both moment equations for the BN input seen."""
    node = bn_node(m, bn_name)
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in m.graph.initializer}
    gamma, beta = inits[node.input[1]], inits[node.input[2]]
    ref = whole_run(m, x, [node.input[0], node.output[0]])
    got = whole_run(graphs.edited(m, values), x, [node.input[0], node.output[0]])
    axes = (0, 2, 3)
    y_ref, y, xin, rin = ref[node.output[0]], got[node.output[0]], got[node.input[0]], ref[node.input[0]]
    assert not np.allclose(xin, rin, atol=1e-3)  # the BN's input did change
    np.testing.assert_allclose(y.mean(axis=axes), y_ref.mean(axis=axes), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=axes), y_ref.var(axis=axes), rtol=1e-4, atol=1e-6)
    # gamma (mean(x) - m) / sqrt(v + eps) + beta = mean(y_ref);  gamma^2 var(x) / (v + eps) = var(y_ref)
    s = gamma * np.sqrt(xin.var(axis=axes)) / np.sqrt(y_ref.var(axis=axes))
    mean = xin.mean(axis=axes) - s * (y_ref.mean(axis=axes) - beta) / gamma
    np.testing.assert_allclose(values[node.input[3]], mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(values[node.input[4]], s ** 2 - EPS, rtol=1e-4, atol=1e-6)


def perturbed(ir, li, seed, scale=(0.6, 1.4)):
    """Layer ``li``'s weights with every neuron rescaled and shifted (another input to the next BN)."""
    rng = np.random.default_rng(seed)
    w, b = (np.array(a, np.float64) for a in ir.weights(ir.layers[li]))
    f = rng.uniform(*scale, w.shape[0])
    w = w * f.reshape((-1,) + (1,) * (w.ndim - 1)) + rng.normal(0, 0.05, w.shape)
    return w.astype(np.float32), (b * f + rng.normal(0, 0.1, b.shape)).astype(np.float32)


@pytest.mark.parametrize("li,bn_name", [(0, "bn1"), (1, "bn3")])
def test_restat_batchnorms_restores_each_bn_outputs_moments(li, bn_name):
    models = [graphs.plain_bn(1), graphs.plain_bn(2)]
    xs = [graphs.data(3, (3, 8, 8), n=N), graphs.data(4, (3, 8, 8), n=N)]
    irs = [build_ir(m, "t", "t.onnx", 17) for m in models]
    eff = [perturbed(irs[0], li, 10), perturbed(irs[1], li, 11)]
    names, constants, irs = restat(models, (li, eff), xs)
    assert names == [bn_name]
    for t, m in enumerate(models):
        node = bn_node(m, bn_name)
        layer = irs[t].layers[li]
        assert sorted(constants[t]) == sorted([node.input[3], node.input[4]])  # the BN's mean and var only
        values = {layer.weight: eff[t][0], layer.bias: eff[t][1], **constants[t]}
        check_moments_restored(m, values, xs[t], bn_name)


def test_restat_batchnorms_leaves_a_task_whose_input_did_not_change():
    """Task 0's layer changed, task 1's did not (no zipped weights): only task 0 gets statistics."""
    models = [graphs.plain_bn(1), graphs.plain_bn(2)]
    xs = [graphs.data(3, (3, 8, 8), n=N), graphs.data(4, (3, 8, 8), n=N)]
    ir = build_ir(models[0], "t", "t.onnx", 17)
    eff = perturbed(ir, 0, 12)
    _, constants, irs = restat(models, (0, [eff, None]), xs)
    assert constants[1] == {}
    values = {irs[0].layers[0].weight: eff[0], irs[0].layers[0].bias: eff[1], **constants[0]}
    check_moments_restored(models[0], values, xs[0], "bn1")
    # the same weights as the original's, given explicitly: nothing to re-estimate either
    w, b = (np.array(a) for a in irs[1].weights(irs[1].layers[0]))
    _, constants, _ = restat(models, (0, [(w, b), (w * 1.0, b * 1.0)]), xs)
    assert constants[0] != {} and constants[1] == {}  # (task 0 got task 1's weights: changed)


def test_restat_batchnorms_keeps_the_mean_of_a_channel_whose_variance_collapsed():
    models = [graphs.plain_bn(1), graphs.plain_bn(2)]
    xs = [graphs.data(3, (3, 8, 8), n=N), graphs.data(4, (3, 8, 8), n=N)]
    irs = [build_ir(m, "t", "t.onnx", 17) for m in models]
    effs = []
    for t, ir in enumerate(irs):
        w, b = perturbed(ir, 0, 20 + t)
        w[2] *= 1e-4  # channel 2: the same sign pattern, 1e-8 of the variance after the ReLU
        b[2] *= 1e-4
        effs.append((w, b))
    _, constants, irs = restat(models, (0, effs), xs)
    m, t = models[0], 0
    node = bn_node(m, "bn1")
    values = {irs[t].layers[0].weight: effs[t][0], irs[t].layers[0].bias: effs[t][1], **constants[t]}
    ref = whole_run(m, xs[t], [node.output[0]])[node.output[0]]
    got = whole_run(graphs.edited(m, values), xs[t], [node.output[0]])[node.output[0]]
    axes = (0, 2, 3)
    # every other channel: both moments restored; channel 2 cannot get its variance back (v >= 0) but
    # can get its mean
    others = [c for c in range(8) if c != 2]
    np.testing.assert_allclose(got.var(axis=axes)[others], ref.var(axis=axes)[others], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.mean(axis=axes), ref.mean(axis=axes), rtol=1e-4, atol=1e-5)
