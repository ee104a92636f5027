import itertools

import graphs
import numpy as np
import onnx
import pytest
from conftest import SAMPLES

from onnxzip import ZipOptions, accuracy_of, zip_models
from onnxzip.graph.io import load_arrays
from onnxzip.tasks import split

NAMES = ("digit", "parity")
CALIB = [SAMPLES / "calib_digit.npz", SAMPLES / "calib_parity.npz"]


def sample_models(arch):
    return [SAMPLES / f"{arch}_{t}.onnx" for t in NAMES]


def outputs(model, feeds):
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model),
                                providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_share_zero_reproduces_both_originals(arch):
    result = zip_models(sample_models(arch), CALIB, share=0.0, names=NAMES, quiet=True)
    test = load_arrays(SAMPLES / "test_digit.npz")["image"]
    got = outputs(result.model, {"image": test})
    for t, path in zip(NAMES, sample_models(arch)):
        ref = outputs(path, {"image": test})["logits"]
        np.testing.assert_allclose(got[f"{t}/logits"], ref, atol=1e-5, rtol=0)
    assert result.report["params_after"] == result.report["params_before"]
    assert all(row["max_abs_diff"] <= 1e-5 for row in result.report["tasks"])


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_share_one_of_a_model_with_itself_reproduces_it(arch):
    path = sample_models(arch)[0]
    result = zip_models([path, path], [CALIB[0], CALIB[1]], share=1.0, names=("a", "b"), quiet=True)
    test = load_arrays(SAMPLES / "test_digit.npz")["image"]
    ref = outputs(path, {"image": test})["logits"]
    got = outputs(result.model, {"image": test})
    for t in ("a", "b"):
        np.testing.assert_allclose(got[f"{t}/logits"], ref, atol=1e-4)
    assert all(layer["cost"] == pytest.approx(0, abs=1e-9) for layer in result.report["layers"])


def test_partial_share_is_valid_and_stores_shared_blocks_once():
    result = zip_models(sample_models("mlp"), CALIB, share=0.5, names=NAMES, quiet=True)
    m = result.model
    onnx.checker.check_model(m, full_check=True)
    onnx.shape_inference.infer_shapes(m, strict_mode=True)
    assert m.opset_import[0].version <= 20
    inits = {i.name: i for i in m.graph.initializer}
    shared = sorted(n for n in inits if n.startswith("shared/"))
    assert shared == ["shared//1/Gemm.b_s.stacked", "shared//1/Gemm.w_s0.stacked", "shared//3/Gemm.b_s.stacked",
                      "shared//3/Gemm.w_s0.stacked"]
    # layer 1 on the shared input is one node for both tasks: its private rows, the shared block
    # (150 x 64), the other task's private rows, stacked (layer 3's shared block likewise stacks with
    # the private rows' weights on the same shared input channels)
    users = [n for n in m.graph.node if "shared//1/Gemm.w_s0.stacked" in n.input]
    assert len(users) == 1 and tuple(inits["shared//1/Gemm.w_s0.stacked"].dims) == (150 + 2 * 150, 64)
    # parameters: each shared neuron stores its shared-input weights and bias once
    before = result.report["params_before"]
    saved = 150 * (64 + 1) + 50 * (150 + 1)
    assert result.report["params_after"] == before - saved
    for row in result.report["tasks"]:
        assert 0 < row["rel_err"] < 0.5 and row["top1_agreement"] > 0.9


def test_full_share_on_a_shared_input_computes_the_prefix_once():
    result = zip_models(sample_models("mlp"), CALIB, share=1.0, names=NAMES, quiet=True)
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("Flatten") == 1 and ops.count("Relu") == 2
    assert ops.count("Gemm") == 3  # two shared hidden layers once, the two private heads stacked
    assert ops.count("Split") == 1
    assert [i.name for i in result.model.graph.input] == ["image"]


def test_separate_inputs_give_the_same_outputs():
    joint = zip_models(sample_models("cnn"), CALIB, share=0.5, names=NAMES, quiet=True)
    apart = zip_models(sample_models("cnn"), CALIB, share=0.5, names=NAMES, quiet=True, separate_inputs=True)
    assert [i.name for i in apart.model.graph.input] == ["digit/image", "parity/image"]
    x = load_arrays(SAMPLES / "test_digit.npz")["image"][:50]
    a = outputs(joint.model, {"image": x})
    b = outputs(apart.model, {"digit/image": x, "parity/image": x})
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(scale=True), dict(features=True), dict(bn=False, bias=False, reshape=True)])
@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_generated_cnns_zip_and_verify(kwargs, share):
    """The built-in equivalence check raises on any emission bug; here it runs on per-channel
    constants, a zipped graph output restored to task order, and Reshape flattening."""
    models = [graphs.cnn(1, **kwargs), graphs.cnn(2, **kwargs)]
    data = [{"x": graphs.data(3, (3, 8, 8))}, {"x": graphs.data(4, (3, 8, 8))}]
    result = zip_models(models, data, share=share, quiet=True)
    onnx.checker.check_model(result.model, full_check=True)
    if share == 0.0:
        got = outputs(result.model, {"x": data[0]["x"]})
        for t, m in zip(result.names, models):
            for name, ref in outputs(m, {"x": data[0]["x"]}).items():
                np.testing.assert_allclose(got[f"{t}/{name}"], ref, atol=1e-5)
    assert result.report["equivalence_max_abs_diff"] <= 1e-4


def floats(model: onnx.ModelProto) -> int:
    """Float parameters among a model's initializers, counted by hand."""
    return sum(onnx.numpy_helper.to_array(i).size for i in model.graph.initializer
               if i.data_type == onnx.TensorProto.FLOAT)


def dense_rows(model: onnx.ModelProto, reads: str) -> np.ndarray:
    """Every neuron (row: its weights as y = x W' reads them) of the Gemm/MatMul nodes reading ``reads``."""
    inits = {i.name: onnx.numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    rows = []
    for node in model.graph.node:
        if node.op_type not in ("Gemm", "MatMul") or node.input[0] != reads:
            continue
        w = inits[node.input[1]]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert not attrs.get("transA", 0)
        rows.append(w.T if node.op_type == "MatMul" or not attrs.get("transB", 0) else w)
        rows[-1] = rows[-1] * attrs.get("alpha", 1.0)
    return np.concatenate(rows)


def _neuron_of(row: np.ndarray, original: np.ndarray) -> int | None:
    """The original neuron (row) equal to ``row`` within float32 rounding, or None."""
    hit = np.flatnonzero(np.abs(original - row).max(axis=1) < 1e-6)
    return int(hit[0]) if len(hit) else None


@pytest.mark.parametrize("style", ["gemm_t", "matmul"])
def test_mlp_styles_and_per_layer_shares(style):
    """share (0.25, 1.0) of MLP 12-16-10-3 gives round(0.25 * 16) = 4 and 10 shared neurons. Counted by
    hand in the emitted model: fc0's stored rows are task A's own 12 private rows (its original
    neurons, read through transB/alpha or a MatMul), B's 12 and 4 merged ones equal to neither; the
    float parameters are 2 x 411 less 4 x (12 + 1) (shared fc0 neurons) less 10 x (4 + 1) (shared fc1
    neurons' weights on fc0's 4 shared channels and bias): 720, the only (k0, k1) giving that count."""
    models = [graphs.mlp(1, style=style), graphs.mlp(2, style="gemm")]
    data = [{"x": graphs.data(5, (12,))}, {"x": graphs.data(6, (12,))}]
    result = zip_models(models, data, share=(0.25, 1.0), quiet=True, matching="greedy")
    assert [row["shared"] for row in result.report["layers"]] == [4, 10]
    assert [floats(m) for m in models] == [411, 411]
    assert floats(result.model) == 2 * 411 - 4 * 13 - 10 * 5 == result.report["params_after"]
    assert [(k0, k1) for k0 in range(17) for k1 in range(11) if k0 * 13 + k1 * (k0 + 1) == 102] == [(4, 10)]
    stored = dense_rows(result.model, "x")
    originals = [dense_rows(m, "x") for m in models]
    assert stored.shape == (2 * 16 - 4, 12)
    own = [[_neuron_of(row, o) for row in stored] for o in originals]
    for t in range(2):
        found = [i for i in own[t] if i is not None]
        assert len(found) == len(set(found)) == 12  # 12 distinct original neurons of the task, unchanged
    merged = [r for r, (a, b) in enumerate(zip(*own)) if a is None and b is None]
    assert len(merged) == 4


def test_per_layer_shares_as_a_list():
    models = [graphs.mlp(1), graphs.mlp(2)]
    data = [{"x": graphs.data(5, (12,))}, {"x": graphs.data(6, (12,))}]
    result = zip_models(models, data, share=[0.5, 0.5], quiet=True)
    assert [row["shared"] for row in result.report["layers"]] == [8, 5]  # round(0.5 x 16), round(0.5 x 10)


def test_per_layer_shares_written_as_integers_are_fractions():
    models = [graphs.mlp(1), graphs.mlp(2)]
    data = [{"x": graphs.data(5, (12,))}, {"x": graphs.data(6, (12,))}]
    result = zip_models(models, data, share=(1, 0), quiet=True)
    assert [row["shared"] for row in result.report["layers"]] == [16, 0]


def _kill(m: onnx.ModelProto, channel: int) -> onnx.ModelProto:
    """conv0's ``channel`` dead: zero weights, bias, BatchNorm mean and shift: its (folded)
    pre-activation is exactly 0 everywhere, and so is every downstream statistic of it."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for init in out.graph.initializer:
        if init.name in ("cw0", "cb0", "m0", "t0"):
            v = onnx.numpy_helper.to_array(init).copy()
            v[channel] = 0.0
            init.CopyFrom(onnx.numpy_helper.from_array(v, init.name))
    return out


@pytest.mark.parametrize("hessian", ["exact", "channel"])
def test_exact_hessian_and_dead_neurons(hessian):
    """A dead conv0 channel in each task (channel 1 of A, 4 of B): two all-zero neurons merge at no
    cost, so sharing one conv0 neuron pairs exactly them and the zipped model computes both originals
    (ONNX Runtime) though the next layer's statistics have all-zero rows and columns. At share 0.75
    the report's fidelity equals the relative error recomputed in numpy from ONNX Runtime runs."""
    models = [_kill(graphs.cnn(5), 1), _kill(graphs.cnn(6), 4)]
    data = [{"x": graphs.data(7, (3, 8, 8))}, {"x": graphs.data(8, (3, 8, 8))}]
    one = zip_models(models, data, share=(1 / 6, 0.0, 0.0), hessian=hessian, quiet=True, names=("a", "b"))
    assert [row["shared"] for row in one.report["layers"]] == [1, 0, 0]
    assert one.report["layers"][0]["cost"] == pytest.approx(0.0, abs=1e-12)
    x = graphs.data(9, (3, 8, 8))
    got = outputs(one.model, {"x": x})
    for t, m in zip(("a", "b"), models):
        want = outputs(m, {"x": x})["y"]
        np.testing.assert_allclose(got[f"{t}/y"], want, rtol=0, atol=1e-5 * np.abs(want).max())
    three = zip_models(models, data, share=0.75, hessian=hessian, quiet=True, names=("a", "b"))
    assert all(np.isfinite(layer["cost"]) for layer in three.report["layers"])
    _, held = split(64, ZipOptions().hold_out)
    for row, m, d in zip(three.report["tasks"], models, data):  # judged on the held-out samples
        d = {"x": d["x"][held]}
        z = outputs(three.model, d)[f"{row['name']}/y"].astype(np.float64)
        o = outputs(m, d)["y"].astype(np.float64)
        assert np.isfinite(z).all()
        assert row["rel_err"] == pytest.approx(np.linalg.norm(z - o) / np.linalg.norm(o), rel=1e-4)
        assert row["top1_agreement"] == np.mean(z.argmax(axis=1) == o.argmax(axis=1))


def test_accuracy_on_samples_at_half_sharing():
    """A regression bound on what the method achieves (measured: about -0 to -1 points)."""
    result = zip_models(sample_models("cnn"), CALIB, ZipOptions(share=0.5, names=NAMES, quiet=True))
    for t in NAMES:
        d = load_arrays(SAMPLES / f"test_{t}.npz")
        zipped = accuracy_of(result.model, {"image": d["image"]}, d["label"], f"{t}/logits")
        original = accuracy_of(SAMPLES / f"cnn_{t}.onnx", {"image": d["image"]}, d["label"], "logits")
        assert zipped >= original - 0.02


def test_save_is_atomic_and_loadable(tmp_path):
    result = zip_models(sample_models("mlp"), CALIB, share=0.25, quiet=True)
    out = tmp_path / "z.onnx"
    result.save(out)
    assert [p.name for p in tmp_path.iterdir()] == ["z.onnx"]
    assert onnx.load(str(out)).graph.output[0].name == "mlp_digit/logits"


@pytest.mark.parametrize("attrs", [dict(strides=[2, 2], pads=[1, 0, 1, 0]), dict(dilations=[2, 2]),
                                   dict(auto_pad="SAME_UPPER", strides=[2, 1]), dict(kernel_shape=[5, 3], pads=[2, 1, 2, 1])])
@pytest.mark.parametrize("hessian", ["channel", "exact"])
def test_conv_attributes_and_no_bias_zip_exactly(attrs, hessian):
    models = [graphs.convnet(1, **dict(attrs)), graphs.convnet(2, classes=2, **dict(attrs))]
    data = [{"x": graphs.data(9, (2, 9, 9))}, {"x": graphs.data(10, (2, 9, 9))}]
    zero = zip_models(models, data, share=0.0, hessian=hessian, quiet=True)
    got = outputs(zero.model, {"x": data[1]["x"]})
    for t, m in zip(zero.names, models):
        np.testing.assert_allclose(got[f"{t}/y"], outputs(m, {"x": data[1]["x"]})["y"], atol=1e-6)
    half = zip_models(models, data, share=0.6, hessian=hessian, quiet=True)
    assert [row["shared"] for row in half.report["layers"]] == [3, 2]
    assert half.report["equivalence_max_abs_diff"] <= 1e-5


def test_too_large_hessian_is_a_clear_error(monkeypatch):
    import onnxzip.sharing.problem
    from onnxzip import UsageError
    import onnxzip.sharing.loop
    import onnxzip.sharing.memory
    monkeypatch.setattr(onnxzip.sharing.problem, "available_memory", lambda: 2 * 301 ** 2 * 8 * 6 * 2 - 1)
    real = onnxzip.sharing.loop.loss_statistics
    monkeypatch.setattr(onnxzip.sharing.loop, "loss_statistics", lambda *a: pytest.fail("said only after work began"))
    with pytest.raises(UsageError, match=r"layer '/3/Gemm' has 300 weights per neuron.*--share list with 0"):
        zip_models(sample_models("mlp"), CALIB, share=0.5, quiet=True)  # (before any pass of the models)
    monkeypatch.setattr(onnxzip.sharing.loop, "loss_statistics", real)
    monkeypatch.setattr(onnxzip.sharing.memory, "rss_mb", lambda: 0.0)  # (this process is larger than the 17 MB said)
    result = zip_models(sample_models("mlp"), CALIB, share=(0.5, 0.0), quiet=True)  # the way out it names
    assert [row["shared"] for row in result.report["layers"]] == [150, 0]


def test_recovery_refits_to_the_original_pre_activations():
    """Label-free recovery (default) against the paper's targets, at full sharing of the sample CNNs."""
    plain = zip_models(sample_models("cnn"), CALIB, share=1.0, names=NAMES, quiet=True, recover=False, hold_out=0)
    recovered = zip_models(sample_models("cnn"), CALIB, share=1.0, names=NAMES, quiet=True, hold_out=0)
    assert recovered.report["params_after"] == plain.report["params_after"]
    for p, r in zip(plain.report["tasks"], recovered.report["tasks"]):
        assert r["rel_err"] < 0.5 * p["rel_err"]
    for t in NAMES:
        d = load_arrays(SAMPLES / f"test_{t}.npz")
        acc = accuracy_of(recovered.model, {"image": d["image"]}, d["label"], f"{t}/logits")
        original = accuracy_of(SAMPLES / f"cnn_{t}.onnx", {"image": d["image"]}, d["label"], "logits")
        assert acc >= original - 0.03  # measured: -2.5 and -1.2 points


def test_parameter_budget_is_met_and_reported():
    result = zip_models(sample_models("cnn"), CALIB, names=NAMES, quiet=True, target_params=0.7)
    rep = result.report
    assert rep["params_after"] / rep["params_before"] <= 0.71  # layer parameters dominate the count
    assert rep["budget"]["counts"] == [row["shared"] for row in rep["layers"]]
    assert rep["cost_units"] == "loss"
    for t in NAMES:
        d = load_arrays(SAMPLES / f"test_{t}.npz")
        acc = accuracy_of(result.model, {"image": d["image"]}, d["label"], f"{t}/logits")
        original = accuracy_of(SAMPLES / f"cnn_{t}.onnx", {"image": d["image"]}, d["label"], "logits")
        assert acc >= original - 0.01  # measured: no loss at ~60-75% kept


def test_zip_with_labels_and_finetune():
    train = [SAMPLES / "train_digit.npz", SAMPLES / "train_parity.npz"]
    result = zip_models(sample_models("cnn"), train, share=1.0, names=NAMES, quiet=True, labels="label",
                        finetune=100, recover=False)  # (with recovery the zip is at its held-out best already)
    rep = result.report
    assert rep["finetune"]["steps"] == 100
    assert all(a["rel_err"] != b["rel_err"] for a, b in zip(rep["tasks"], rep["finetune"]["tasks_before"]))
    d = load_arrays(SAMPLES / "test_digit.npz")
    assert accuracy_of(result.model, {"image": d["image"]}, d["label"], "digit/logits") > 0.95
    with pytest.raises(Exception, match="--finetune needs labels"):
        zip_models(sample_models("cnn"), CALIB, share=1.0, quiet=True, finetune=10)


def _with_output(m: onnx.ModelProto, name: str) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return out


def test_correlation_matching_pairs_as_brute_force_on_the_activations():
    """ZipIt!-style baseline on two small CNNs, share 0.5 of conv0's 6 channels: the 3 pairs chosen are
    the ones of least summed (1 - Pearson correlation), found by brute force over every set of 3
    one-to-one pairs, the correlations computed in numpy from conv0's pre-activations (its BatchNorm's
    output) of both originals, run in ONNX Runtime on both tasks' calibration samples together."""
    models = [graphs.cnn(1), graphs.cnn(2)]
    data = [{"x": graphs.data(3, (3, 8, 8))}, {"x": graphs.data(4, (3, 8, 8), n=48)}]
    result = zip_models(models, data, share=(0.5, 0.0, 0.0), quiet=True, cost="correlation", hessian="identity",
                        recover=False, loss_aware=False, hold_out=0)
    assert result.report["samples"] == [64 + 48, 64 + 48]  # both tasks run both calibration sets
    x = np.concatenate([d["x"] for d in data])
    acts = [outputs(_with_output(m, "bn0"), {"x": x})["bn0"].transpose(0, 2, 3, 1).reshape(-1, 6).astype(np.float64)
            for m in models]
    a, b = ((v - v.mean(axis=0)) / v.std(axis=0) for v in acts)
    cost = 1.0 - a.T @ b / len(a)
    best = min(((ia, ib) for ia in itertools.combinations(range(6), 3) for ib in itertools.permutations(range(6), 3)),
               key=lambda p: sum(cost[i, j] for i, j in zip(*p)))
    layer = result.plan.layers[0]  # rows[t][:shared]: each task's original neurons, shared slots first
    chosen = set(zip(layer.rows[0][:layer.shared].tolist(), layer.rows[1][:layer.shared].tolist()))
    assert layer.shared == 3 and chosen == set(zip(*best))


def test_correlation_matching_baseline():
    result = zip_models(sample_models("cnn"), CALIB, share=0.5, names=NAMES, quiet=True, cost="correlation",
                        hessian="identity", recover=False, loss_aware=False, hold_out=0)
    assert result.report["equivalence_max_abs_diff"] <= 1e-4
    n = [len(np.load(c)["image"]) for c in CALIB]
    assert result.report["samples"] == [sum(n), sum(n)] == [512, 512]  # both tasks run both calibration sets
    assert [row["shared"] for row in result.report["layers"]] == [8, 16, 60, 42]
    from onnxzip import UsageError
    with pytest.raises(UsageError, match="^correlation matching zips two models$"):
        zip_models(sample_models("cnn") + [SAMPLES / "cnn_mod3.onnx"], CALIB + [SAMPLES / "calib_mod3.npz"],
                   share=0.5, quiet=True, cost="correlation")


def test_equivalence_tells_rounding_from_a_structural_mismatch():
    from onnxzip.check.verify import check_equivalence
    from onnxzip.errors import EquivalenceError
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 1, (8, 1, 16, 16))
    assert check_equivalence(ref + 5e-5, ref, 0.0, "x")[2] == "ok"
    assert check_equivalence(ref, ref, 1e-5, "x")[1] == pytest.approx(2e-4)  # 20x the model's own noise
    assert check_equivalence(ref, ref, 1.0, "x")[1] == pytest.approx(2e-3)  # but capped
    near = ref.copy()
    near[0, 0, 3, 4] += 5e-4  # one element over the tolerance, by a little: rounding, kept
    assert check_equivalence(near, ref, 0.0, "x")[2] == "rounding"
    with pytest.raises(EquivalenceError, match="of the elements"):
        check_equivalence(ref[:, :, ::-1], ref, 0.0, "x")  # a permutation: everywhere wrong
    with pytest.raises(EquivalenceError):
        far = ref.copy()
        far[0, 0, 0, 0] += 0.5  # rare but far beyond float noise
        check_equivalence(far, ref, 0.0, "x")


def _fixed_batch(m: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for v in list(out.graph.input) + list(out.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = batch
    return out


def test_fixed_batch_models_zip_with_any_sample_count():
    models = [_fixed_batch(graphs.mlp(1), 8), _fixed_batch(graphs.mlp(2), 8)]
    data = [{"x": graphs.data(3, (12,), n=13)}, {"x": graphs.data(4, (12,), n=21)}]
    half = zip_models(models, data, share=0.5, quiet=True, names=("a", "b"), hold_out=0)
    assert half.report["samples"] == [13, 21]
    zero = zip_models(models, data, share=0.0, quiet=True, names=("a", "b"))
    x = graphs.data(5, (12,), n=8)
    got = outputs(zero.model, {"x": x})
    for t, seed in (("a", 1), ("b", 2)):  # the oracle: the dynamic-batch original
        np.testing.assert_allclose(got[f"{t}/y"], outputs(graphs.mlp(seed), {"x": x})["y"], atol=1e-5)


def sklearn_like(seed: int, offset: float) -> onnx.ModelProto:
    """skl2onnx's MLPRegressor: Scaler (ai.onnx.ml) -> Cast -> (MatMul + Add (1, H) intercept -> Relu) x2
    -> MatMul + Add -> Reshape; each model with its own scaler."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    f = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)  # noqa: E731
    inits = [f("w0", rng.normal(0, 0.5, (5, 16))), f("b0", rng.normal(0, .1, (1, 16))),
             f("w1", rng.normal(0, 0.3, (16, 16))), f("b1", rng.normal(0, .1, (1, 16))),
             f("w2", rng.normal(0, 0.3, (16, 1))), f("b2", rng.normal(0, .1, (1, 1))),
             numpy_helper.from_array(np.array([-1, 1], np.int64), "shape")]
    nodes = [helper.make_node("Scaler", ["input"], ["scaled"], domain="ai.onnx.ml", name="Scaler",
                              offset=list(offset + rng.normal(size=5)), scale=list(rng.uniform(0.5, 2, 5))),
             helper.make_node("Cast", ["scaled"], ["cast"], to=TensorProto.FLOAT, name="Cast")]
    x = "cast"
    for i in range(3):
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"MatMul{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"Add{i}")]
        x = f"a{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"Relu{i}"))
            x = f"r{i}"
    nodes.append(helper.make_node("Reshape", [x, "shape"], ["variable"], name="Reshape"))
    graph = helper.make_graph(nodes, "g", [graphs.inp("input", [None, 5])], [graphs.inp("variable", [None, 1])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    m.ir_version = 8
    return m


def test_skl2onnx_regressors_with_their_own_scalers_zip():
    models = [sklearn_like(1, 3.0), sklearn_like(2, -1.0)]
    data = [{"input": graphs.data(3, (5,), n=64)}, {"input": graphs.data(4, (5,), n=64)}]
    zero = zip_models(models, data, share=0.0, quiet=True, names=("a", "b"))
    assert len(zero.plan.hidden) == 2  # both hidden dense layers are zippable (the Scaler is folded)
    x = graphs.data(5, (5,), n=16)
    got = outputs(zero.model, {"input": x})
    for t, m in zip(("a", "b"), models):
        np.testing.assert_allclose(got[f"{t}/variable"], outputs(m, {"input": x})["variable"], rtol=1e-4, atol=1e-4)
    half = zip_models(models, data, share=0.5, quiet=True, names=("a", "b"))
    assert [row["shared"] for row in half.report["layers"]] == [8, 8] and not half.report["not_shared"]
    assert not any(n.domain == "ai.onnx.ml" for n in half.model.graph.node)  # one raw input for both


def test_nothing_shared_says_why(caplog):
    models = [graphs.mlp(1, sizes=(12, 3, 3)), graphs.mlp(2, sizes=(12, 3, 3))]
    data = [{"x": graphs.data(3, (12,))}, {"x": graphs.data(4, (12,))}]
    with caplog.at_level("WARNING"):
        result = zip_models(models, data, share=0.1, quiet=True, names=("a", "b"))
    assert result.report["not_shared"] == [{"layer": "fc0", "reason": "share 0.1 of 3 neurons rounds to none"}]
    assert "nothing is shared: fc0: share 0.1 of 3 neurons rounds to none" in caplog.text


def test_a_collapsed_task_is_said_loudly(caplog):
    from onnxzip.check.verify import warn_fidelity
    from onnxzip.report.records import LayerRow, TaskRow, ZipReport
    report = ZipReport([TaskRow("general", rel_err=1.0, mask_iou=0.0, fired=0.0, verdict="collapsed")],
                       [LayerRow("fc", "dense", 8, 3, 0.0)], 1, 1, 1, 1)
    with caplog.at_level("WARNING"):
        warn_fidelity(report, ZipOptions(share=1.0))
    assert "task 'general' COLLAPSED" in caplog.text and "mask IoU 0.000 (fires 0% as often)" in caplog.text


def test_a_normalization_that_changes_the_model_is_a_bug_not_noise():
    from onnxzip.check.verify import float_noise
    from onnxzip.errors import EquivalenceError
    o = np.linspace(0, 1, 50)
    assert float_noise(o + 1e-6, o, "x") == pytest.approx(1e-6)
    with pytest.raises(EquivalenceError, match="normalized model differs from the original file by 0.3"):
        float_noise(o + 0.3, o, "x")


def test_output_kinds_from_the_graph():
    from onnxzip.check.verify import output_kind
    from onnxzip.graph.ir import build_ir
    ir = build_ir(graphs.ln_mlp(0), "t", "t.onnx", 18)  # ends in a Sigmoid
    assert output_kind(ir, "y", np.zeros((4, 3))) == "scores"
    ir = build_ir(graphs.mlp(0), "t", "t.onnx", 17)
    assert output_kind(ir, "y", np.zeros((4, 3))) == "classifier"
    assert output_kind(ir, "y", np.zeros((4, 1))) == "values"


def test_report_records_what_reproduces_the_zip():
    import hashlib

    import onnxzip
    models = sample_models("mlp")
    result = zip_models(models, CALIB, target_params=0.8, names=NAMES, quiet=True)
    report = result.report
    assert report["onnxzip_version"] == onnxzip.__version__
    for row, model, data in zip(report["inputs"], models, CALIB):
        assert row["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
        assert row["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    opts = report["options"]
    assert opts["share"] is None and opts["target_params"] == 0.8 and opts["names"] == list(NAMES)
    assert {"labels", "cost", "task_order", "batch_size", "hessian", "damping"} <= set(opts)
    assert "calibration" in report["metrics_on"]
    # the recorded options redo the same zip
    again = zip_models(models, CALIB, ZipOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()
                                                  if k != "shared_input"}), quiet=True)
    assert [r["shared"] for r in again.report["layers"]] == [r["shared"] for r in report["layers"]]
    in_memory = zip_models([onnx.load(str(m)) for m in models], [dict(np.load(d)) for d in CALIB],
                           target_params=0.8, quiet=True)
    assert [r["model"] for r in in_memory.report["inputs"]] == [None, None]
    assert in_memory.report["inputs"][0]["model_sha256"] != in_memory.report["inputs"][1]["model_sha256"]


def test_the_readme_python_snippet_runs(tmp_path, monkeypatch, capsys):
    """The snippet zips the sample CNNs at share 0.5 and prints params_after: by hand, the originals'
    floats less, per hidden layer, round(0.5 n) shared neurons' weights on the previous layer's shared
    channels and bias, stored once (8 x (9 + 1), 16 x (8 x 9 + 1), 60 x (16 x 4 + 1), 42 x (60 + 1));
    the saved file holds that many, and its test accuracy (numpy argmax of ONNX Runtime's logits) is
    within 2 points of each original's."""
    readme = (SAMPLES.parent / "README.md").read_text()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(SAMPLES.parent)
    exec(compile(snippet.replace('"zipped.onnx"', repr(str(tmp_path / "zipped.onnx"))), "README.md", "exec"), {})
    out, err = capsys.readouterr()
    assert "params" not in err
    saved = onnx.load(str(tmp_path / "zipped.onnx"))
    originals = [onnx.load(str(p)) for p in sample_models("cnn")]
    by_hand = sum(floats(m) for m in originals) - (8 * 10 + 16 * 73 + 60 * 65 + 42 * 61)
    assert int(out.split()[0]) == floats(saved) == by_hand
    for t, m in zip(NAMES, originals):
        d = load_arrays(SAMPLES / f"test_{t}.npz")
        zipped = np.mean(outputs(saved, {"image": d["image"]})[f"{t}/logits"].argmax(axis=1) == d["label"])
        original = np.mean(outputs(m, {"image": d["image"]})["logits"].argmax(axis=1) == d["label"])
        assert zipped >= original - 0.02


def test_tasks_on_the_same_samples_share_one_run_of_the_zipped_model():
    from onnxzip.check.verify import data_groups
    x, y = graphs.data(1, (12,)), graphs.data(2, (12,))
    assert data_groups([{"x": x}, {"x": x.copy()}, {"x": y}]) == [[0, 1], [2]]
    assert data_groups([{"x": x}, {"z": x}]) == [[0], [1]]
    assert data_groups([{"x": x}, {"x": x[:5]}]) == [[0], [1]]


def test_a_keras_tf2onnx_pair_shares_the_dense_layer_after_its_channels_last_flatten():
    """samples/keras_*.onnx (tools/make_keras_pair.py: NHWC input, Conv-BN-ReLU x2, Flatten, Dense):
    at share 0.5 the Dense after the Flatten shares too (nothing is restored to task order), so at
    most 90% of the parameters are kept; each task's test accuracy (ONNX Runtime, labelled test
    images) stays within a point of its original's."""
    names = ("digit", "parity")
    models = [SAMPLES / f"keras_{t}.onnx" for t in names]
    result = zip_models(models, [SAMPLES / f"calib_nhwc_{t}.npz" for t in names], share=0.5, names=names,
                        quiet=True)
    assert result.summary.restored_at == [] and result.summary.params_kept <= 0.9
    assert [row.shared for row in result.summary.layers] == [4, 8, 16]
    out = result.model.graph.output[0].name.split("/")[1]
    for t, m in zip(names, models):
        d = load_arrays(SAMPLES / f"test_nhwc_{t}.npz")
        original = accuracy_of(m, {"image": d["image"]}, d["label"], out)
        assert accuracy_of(result.model, {"image": d["image"]}, d["label"], f"{t}/{out}") >= original - 0.01


def test_a_zip_that_cannot_fit_is_refused_before_it_starts(monkeypatch):
    """What the zip adds by design (here the live tensors of 16,000 fitted samples of a 300-wide layer,
    zipped and original, per task: 77 MB) against a machine said to have 20 MB: refused in one line,
    before any pass."""
    import onnxzip.sharing.loop
    import onnxzip.sharing.memory
    import onnxzip.sharing.problem
    from onnxzip import UsageError
    monkeypatch.setattr(onnxzip.sharing.problem, "available_memory", lambda: 20_000_000)
    monkeypatch.setattr(onnxzip.sharing.memory, "rss_mb", lambda: 0.0)
    monkeypatch.setattr(onnxzip.sharing.loop, "loss_statistics", lambda *a: pytest.fail("said only after work began"))
    models = [graphs.mlp(s, sizes=(12, 300, 40, 3)) for s in (1, 2)]
    data = [{"x": graphs.data(s, (12,), n=20_000)} for s in (3, 4)]
    with pytest.raises(UsageError, match=r"this zip needs about 8\d MB by design \(.*live tensors 77 MB\), more than "
                                         r"this machine's 20 MB"):
        zip_models(models, data, share=0.5, quiet=True)
