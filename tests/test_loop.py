"""The layer loop: the recovery refit against a numeric least-squares solve; end to end, the zip's
invariance to a model's neuron order and the re-estimated BatchNorm statistics, against ORT."""
import graphs
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxzip
from onnxzip.sharing.problem import refit


def test_refit_is_the_regularized_least_squares_solution_toward_the_original_row():
    rng = np.random.default_rng(0)
    n, d = 200, 6
    x = np.hstack([rng.normal(size=(n, d - 1)), np.ones((n, 1))])  # zipped inputs, bias column last
    x_ref = x + 0.3 * rng.normal(size=(n, d)) * np.r_[np.ones(d - 1), 0]  # the original network's inputs
    a = rng.normal(size=(3, d))
    lam = 0.05
    h = x.T @ x / n + lam * np.eye(d)
    g = x.T @ x_ref / n
    got = refit(a, h, g, lam)
    for row, w in zip(a, got):  # oracle: min |X w - X_ref a|^2 / n + lam |w - a|^2, stacked as one lstsq
        lhs = np.vstack([x / np.sqrt(n), np.sqrt(lam) * np.eye(d)])
        rhs = np.concatenate([x_ref @ row / np.sqrt(n), np.sqrt(lam) * row])
        np.testing.assert_allclose(w, np.linalg.lstsq(lhs, rhs, rcond=None)[0], atol=1e-10)


def test_refit_keeps_a_row_whose_input_did_not_change():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4))
    h0 = x.T @ x / 50
    a = rng.normal(size=(2, 4))
    np.testing.assert_allclose(refit(a, h0 + 0.1 * np.eye(4), h0, 0.1), a, atol=1e-12)  # no shrinkage


# ---------------------------------------------------------------------------------------------
# End to end through zip_models, against ONNX Runtime.


def run_all(model, feeds, extra=()):
    """Every output of ``model`` (plus the tensors ``extra``, exposed as outputs) by name."""
    import onnxruntime as ort
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in extra)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def permute_mlp(model, perms):
    """graphs.mlp with the hidden units of layer i permuted by ``perms[i]``: the rows of w_i and
    b_i and the columns of w_{i+1} (the same function, another neuron order)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    arrays = {n: numpy_helper.to_array(i).copy() for n, i in inits.items()}
    for i, p in perms.items():
        arrays[f"w{i}"], arrays[f"b{i}"] = arrays[f"w{i}"][p], arrays[f"b{i}"][p]
        arrays[f"w{i + 1}"] = arrays[f"w{i + 1}"][:, p]
    for n, a in arrays.items():
        inits[n].CopyFrom(numpy_helper.from_array(a, n))
    return m


@pytest.mark.parametrize("which", [0, 1])
def test_permuting_one_models_hidden_units_leaves_the_zipped_model_unchanged(which):
    models = [graphs.mlp(1), graphs.mlp(2)]
    rng = np.random.default_rng(7)
    permuted = list(models)
    permuted[which] = permute_mlp(models[which], {0: rng.permutation(16), 1: rng.permutation(10)})
    x = graphs.data(9, (12,), n=50)
    # the permuted model is the same function (checked in ORT first)
    np.testing.assert_allclose(graphs.run(permuted[which], {"x": x}), graphs.run(models[which], {"x": x}),
                               rtol=1e-5, atol=1e-6)
    data = [{"x": graphs.data(3, (12,))}, {"x": graphs.data(4, (12,))}]
    plain = onnxzip.zip_models(models, data, share=0.5, names=("a", "b"), quiet=True)
    perm = onnxzip.zip_models(permuted, data, share=0.5, names=("a", "b"), quiet=True)
    got, want = run_all(perm.model, {"x": x}), run_all(plain.model, {"x": x})
    for name in ("a/y", "b/y"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4 * np.abs(want[name]).max())
    size = [sum(numpy_helper.to_array(i).size for i in r.model.graph.initializer) for r in (plain, perm)]
    assert size[0] == size[1] and perm.report["params_after"] == plain.report["params_after"]
    assert perm.report["params_after"] < perm.report["params_before"]  # something is shared


def test_kept_batchnorms_get_statistics_that_restore_the_original_output_moments():
    """graphs.plain_bn keeps its BatchNormalizations (after the ReLU, not foldable). After sharing,
    each task's BN must give, on its calibration data, the per-channel mean and variance the
    original BN output has. Oracle: the emitted model and the originals in ORT, numpy moments."""
    models = [graphs.plain_bn(1), graphs.plain_bn(2)]
    data = [{"x": graphs.data(3, (3, 8, 8))}, {"x": graphs.data(4, (3, 8, 8))}]
    result = onnxzip.zip_models(models, data, share=0.25, names=("a", "b"), quiet=True, hold_out=0)
    plan = result.plan
    assert [plan.layers[i].shared for i in (0, 1)] == [2, 3]  # c1: 2 of 8, c2: 3 of 12
    # each BN part is known by its width: (BN index, layer before it, shared part?)
    parts = {2: (0, 0, True), 6: (0, 0, False), 3: (1, 1, True), 9: (1, 1, False)}
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in result.model.graph.initializer}
    for t, name in enumerate(("a", "b")):
        orig_bns = [n for n in models[t].graph.node if n.op_type == "BatchNormalization"]
        orig_inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in models[t].graph.initializer}
        ref = run_all(models[t], data[t], [n.output[0] for n in orig_bns])
        bns = [n for n in ancestors(result.model, f"{name}/y") if n.op_type == "BatchNormalization"]
        assert sorted(inits[n.input[3]].size for n in bns) == [2, 3, 6, 9]
        got = run_all(result.model, data[t], [s for n in bns for s in (n.input[0], n.output[0])])
        for node in bns:
            j, li, shared = parts[inits[node.input[3]].size]
            z = plan.layers[li]
            channels = z.rows[t][:z.shared] if shared else z.rows[t][z.shared:]
            orig = orig_bns[j]
            gamma, beta = orig_inits[orig.input[1]][channels], orig_inits[orig.input[2]][channels]
            y_ref = ref[orig.output[0]].astype(np.float64)[:, channels]
            x, y = got[node.input[0]].astype(np.float64), got[node.output[0]].astype(np.float64)
            axes = (0, 2, 3)
            # the zipped BN output has the original BN output's moments, channel by channel
            np.testing.assert_allclose(y.mean(axis=axes), y_ref.mean(axis=axes), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(y.var(axis=axes), y_ref.var(axis=axes), rtol=1e-4, atol=1e-6)
            # and its statistics are the ones that achieve this for the input it sees: solve
            # gamma (mean(x) - m) / sqrt(v + eps) + beta = mean(y_ref), gamma^2 var(x) / (v + eps) = var(y_ref)
            assert (x.var(axis=axes) > 1e-6).all()  # no dead channel (where no v could match)
            s = gamma * np.sqrt(x.var(axis=axes)) / np.sqrt(y_ref.var(axis=axes))
            mean = x.mean(axis=axes) - s * (y_ref.mean(axis=axes) - beta) / gamma
            np.testing.assert_allclose(inits[node.input[3]], mean, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(inits[node.input[4]], s ** 2 - 1e-5, rtol=1e-4, atol=1e-6)


def ancestors(model, output):
    """The nodes ``output`` depends on."""
    producer = {o: n for n in model.graph.node for o in n.output}
    todo, seen, found = [output], set(), []
    while todo:
        n = producer.get(todo.pop())
        if n is None or n.name in seen:
            continue
        seen.add(n.name)
        found.append(n)
        todo.extend(n.input)
    return found


@pytest.mark.parametrize("make,shape", [(graphs.cnn, (3, 8, 8)), (graphs.resnet, (3, 8, 8)),
                                        (graphs.inception, (3, 8, 8))])
@pytest.mark.parametrize("compensate", [True, False])
def test_offset_basis_zips_as_the_dense_per_channel_statistic_does(monkeypatch, make, shape, compensate):
    """Per-channel conv statistics worked block by block in the offset basis give the merge the dense
    (C K + 1)^2 form gives (the oracle), weights, costs and predictions alike."""
    from onnxzip.tasks import load_tasks
    from onnxzip.graph.align import align
    from onnxzip.options import ZipOptions
    from onnxzip.sharing.loop import zip_tasks
    _, irs, data = load_tasks([make(1), make(2)], ["a", "b"], [{"x": graphs.data(s, shape, n=48)} for s in (3, 4)])
    irs = align(irs)

    def plan(offset: bool):
        opts = ZipOptions(hessian="channel", compensate=compensate, loss_aware=compensate, offset_basis=offset)
        return zip_tasks(irs, data, 0.5, opts)

    got, want = plan(True), plan(False)
    assert any(irs[0].layers[i].kernel > 1 for i in got.hidden)
    for li, z in want.layers.items():
        g = got.layers[li]
        assert [r.tolist() for r in g.rows] == [r.tolist() for r in z.rows], irs[0].layers[li].name
        for a, b in zip(g.weights, z.weights):
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * np.abs(b).max())
        np.testing.assert_allclose(g.costs, z.costs, rtol=1e-7, atol=1e-12)
        if z.predicted is not None:
            np.testing.assert_allclose(g.predicted, z.predicted, rtol=1e-6, atol=1e-12)
