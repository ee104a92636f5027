"""Each architecture zips: share 0 reproduces every task, other shares give valid models that pass
the built-in equivalence check (the zipped model against each task's zipped network)."""
import graphs
import numpy as np
import onnx
import pytest

from onnxzip import zip_models
from onnxzip.graph.ir import build_ir

ARCHS = {"resnet": graphs.resnet, "inception": graphs.inception, "mobilenet": graphs.mobilenet,
         "plain_bn": graphs.plain_bn, "shape_ops": graphs.shape_ops, "reshape_reduce": graphs.reshape_reduce,
         "ln_mlp": graphs.ln_mlp, "ln_mlp_op": graphs.ln_mlp_op, "instnorm": graphs.instnorm_cnn,
         "ln_spatial": graphs.ln_spatial, "ln_spatial_c": lambda seed, classes: graphs.ln_spatial(seed, classes, (8, 1, 1)),
         "ln_mean_out": lambda seed, classes: graphs.ln_spatial(seed, classes, (8, 8, 8), mean_output=True),
         "tokens": graphs.token_block, "tokens_ln_op": lambda seed, classes: graphs.token_block(seed, classes, False)}


def run_all(model, feeds):
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_architecture_zips(arch, share):
    models = [ARCHS[arch](1, classes=4), ARCHS[arch](2, classes=2)]
    data = [{"x": graphs.data(3, (3, 8, 8))}, {"x": graphs.data(4, (3, 8, 8))}]
    result = zip_models(models, data, share=share, quiet=True, names=("a", "b"))
    onnx.checker.check_model(result.model, full_check=True)
    onnx.shape_inference.infer_shapes(result.model, strict_mode=True)
    assert result.report["equivalence_max_abs_diff"] <= 1e-4
    assert result.report["deployment_problems"] == []  # TensorRT-ready (onnxzip.graph.lint)
    x = graphs.data(5, (3, 8, 8), n=16)
    got = run_all(result.model, {"x": x})
    for t, m in zip(("a", "b"), models):
        ref = run_all(m, {"x": x})["y"]
        assert got[f"{t}/y"].shape == ref.shape and np.isfinite(got[f"{t}/y"]).all()
        if share == 0.0:
            np.testing.assert_allclose(got[f"{t}/y"], ref, atol=1e-5)
    if share > 0:
        assert result.report["params_after"] < result.report["params_before"]


def layer_names(ir, members):
    return [ir.layers[i].name for i in members]


def test_resnet_residual_stream_is_one_group():
    ir = build_ir(graphs.resnet(0), "r", "r.onnx", 17)
    groups = [layer_names(ir, g) for g in ir.spaces.groups]
    assert ["stem", "b1c2"] in groups  # both write into the first residual stream
    assert ["b2c2", "b2proj"] in groups or ["b2proj", "b2c2"] in groups
    assert ["b1c1"] in groups and ["b2c1"] in groups


def test_concat_builds_a_space_from_blocks():
    ir = build_ir(graphs.inception(0), "i", "i.onnx", 17)
    mix = next(layer for layer in ir.layers if layer.name == "mix")
    space = ir.spaces.layout[mix.input]
    names = [ir.layers[s.layer].name for s in space.segments]
    assert names == ["br1", "br3", "stem"] and [s.count for s in space.segments] == [4, 5, 6]


def test_depthwise_convs_follow_their_input():
    ir = build_ir(graphs.mobilenet(0), "m", "m.onnx", 17)
    assert layer_names(ir, ir.spaces.followers) == ["dw1", "dw2"]
    assert "BatchNormalization" in [n.op for n in ir.graph.nodes]  # BN after ReLU stays


def test_residual_shares_one_matching_across_the_group():
    models = [graphs.resnet(1), graphs.resnet(2)]
    data = [{"x": graphs.data(3, (3, 8, 8))}, {"x": graphs.data(4, (3, 8, 8))}]
    result = zip_models(models, data, share=0.5, quiet=True)
    layers = {row["name"]: row["shared"] for row in result.report["layers"]}
    assert layers["stem"] == layers["b1c2"] == 4 and layers["b2c2"] == layers["b2proj"] == 8
    z = result.plan.layers
    idx = {layer.name: i for i, layer in enumerate(build_ir(models[0], "a", "a", 17).layers)}
    for t in range(2):
        np.testing.assert_array_equal(z[idx["stem"]].rows[t], z[idx["b1c2"]].rows[t])


def test_three_tasks_with_different_heads():
    models = [graphs.cnn(1, classes=4), graphs.cnn(2, classes=2), graphs.cnn(3, classes=3)]
    data = [{"x": graphs.data(s, (3, 8, 8))} for s in (4, 5, 6)]
    result = zip_models(models, data, share=0.5, quiet=True, names=("a", "b", "c"))
    assert [o.name for o in result.model.graph.output] == ["a/y", "b/y", "c/y"]
    assert result.report["equivalence_max_abs_diff"] <= 1e-4
    orders = result.plan.orders
    assert orders and all(len(o["costs"]) == 3 for o in orders.values())  # every starting pair tried
    # oracle: each starting pair zipped on its own with --task-order given; the first group sees the
    # same inputs in every run, so its cost per order is comparable, and auto must take the cheapest
    first = min(orders)
    given = {}
    for perm in ((0, 1, 2), (0, 2, 1), (1, 2, 0)):
        names = tuple("abc"[i] for i in perm)
        run = zip_models([models[i] for i in perm], [data[i] for i in perm], share=0.5, quiet=True, names=names,
                         task_order="given")
        given[f"{names[0]}-{names[1]}"] = sum(run.plan.orders[first]["costs"].values())
    for pair, cost in orders[first]["costs"].items():
        assert cost == pytest.approx(given[pair], rel=1e-6)
    assert "-".join(orders[first]["order"][:2]) == min(given, key=given.get)
    zero = zip_models(models, data, share=0.0, quiet=True, names=("a", "b", "c"))
    x = graphs.data(7, (3, 8, 8))
    got = run_all(zero.model, {"x": x})
    for t, m in zip("abc", models):
        np.testing.assert_allclose(got[f"{t}/y"], run_all(m, {"x": x})["y"], atol=1e-5)


def test_dynamic_spatial_dims_are_fixed_from_the_calibration_data():
    models = []
    for seed in (1, 2):
        m = graphs.cnn(seed)  # Flatten -> Gemm needs the spatial size
        dims = m.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "H", "W"
        models.append(m)
    data = [{"x": graphs.data(3, (3, 8, 8))}, {"x": graphs.data(4, (3, 8, 8))}]
    result = zip_models(models, data, share=0.5, quiet=True)
    shape = result.model.graph.input[0].type.tensor_type.shape.dim
    assert shape[0].dim_param and [d.dim_value for d in shape[1:]] == [3, 8, 8]  # batch stays dynamic
    assert result.report["equivalence_max_abs_diff"] <= 1e-4
    assert models[0].graph.input[0].type.tensor_type.shape.dim[2].dim_param == "H"  # input untouched


def test_batchnorm_after_relu_is_kept_and_runs_per_part():
    ir = build_ir(graphs.plain_bn(0), "p", "p.onnx", 17)
    assert [n.op for n in ir.graph.nodes].count("BatchNormalization") == 2
    models = [graphs.plain_bn(1), graphs.plain_bn(2)]
    data = [{"x": graphs.data(3, (3, 8, 8))}, {"x": graphs.data(4, (3, 8, 8))}]
    result = zip_models(models, data, share=0.5, quiet=True)
    bns = [n for n in result.model.graph.node if n.op_type == "BatchNormalization"]
    assert len(bns) == 8  # two BNs x (shared part, private part) x two tasks


@pytest.mark.parametrize("make", [graphs.shape_ops, graphs.reshape_reduce])
def test_shape_ops_keep_the_channel_space(make):
    ir = build_ir(make(0), "s", "s.onnx", 17)
    assert ir.spaces.restore == {}
    assert ir.hidden == [0] or ir.hidden == [0, 1]


def test_kept_batchnorm_statistics_are_re_estimated():
    models = [graphs.plain_bn(1), graphs.plain_bn(2)]
    data = [{"x": graphs.data(3, (3, 8, 8))}, {"x": graphs.data(4, (3, 8, 8))}]
    half = zip_models(models, data, share=0.5, quiet=True)
    assert half.plan.constants[0] and half.plan.constants[1]  # new means/variances for the kept BNs
    assert half.report["equivalence_max_abs_diff"] <= 1e-4  # and the emitted model uses them
    zero = zip_models(models, data, share=0.0, quiet=True)
    assert zero.plan.constants == [{}, {}]  # nothing changed upstream: nothing to re-estimate
    plain = zip_models(models, data, share=0.5, quiet=True, recover=False)
    assert plain.plan.constants == [{}, {}]
