"""Transformer encoders: the sample ViT pairs (dynamo and legacy exports) and the BERT-style pair.

Share 0 must reproduce the original files in ONNX Runtime; at other shares the zipped model must
pass the checker and its own equivalence check, and stay close to the originals. The residual
stream must be one matching group; Q, K and V (a fused projection split in three) are one group
whose heads are tied (tests/test_heads.py).
"""
import graphs
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from conftest import SAMPLES
from onnx import helper, numpy_helper

from onnxzip import zip_models
from onnxzip.graph.io import load_arrays
from onnxzip.graph.ir import build_ir
from onnxzip.graph.normalize import fold_reshape_shapes, normalize, onnx_opset, prepare, token_matmul_to_gemm
from onnxzip.graph.axes import moved_axis

VIT = {"dynamo": ("vit_digit.onnx", "vit_parity.onnx"), "legacy": ("vit_digit_legacy.onnx", "vit_parity_legacy.onnx")}


def run(model, feeds):
    import onnxruntime as ort
    sess = ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def vit_pair(exporter):
    models = [str(SAMPLES / f) for f in VIT[exporter]]
    calib = [load_arrays(SAMPLES / f"calib_{t}.npz") for t in ("digit", "parity")]
    return models, [{"image": c["image"][:96]} for c in calib]


@pytest.mark.parametrize("exporter", VIT)
def test_vit_share0_reproduces_the_originals(exporter):
    models, data = vit_pair(exporter)
    result = zip_models(models, data, share=0.0, quiet=True, names=("digit", "parity"))
    x = load_arrays(SAMPLES / "test_digit.npz")["image"][:64]
    got = run(result.model, {"image": x})
    for t, m in zip(("digit", "parity"), models):
        np.testing.assert_allclose(got[f"{t}/logits"], run(m, {"image": x})["logits"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("exporter", VIT)
def test_vit_zips_with_its_residual_stream_tied(exporter):
    models, data = vit_pair(exporter)
    result = zip_models(models, data, share=0.5, quiet=True, names=("digit", "parity"))
    onnx.checker.check_model(result.model, full_check=True)
    assert result.report["equivalence_max_abs_diff"] <= 1e-4 and result.report["deployment_problems"] == []
    assert result.report["params_after"] < 0.9 * result.report["params_before"]
    proto = onnx.load(models[0])
    ir = build_ir(proto, "a", models[0], onnx_opset(proto))
    dense = [layer for layer in ir.layers if layer.kind == "dense"]
    assert len(dense) == 14 and len(ir.hidden) == 13  # embed, 2 x (q, k, v (the fused qkv split), out, ff1, ff2); the head
    stream = max(ir.spaces.groups, key=len)
    assert len(stream) == 5  # the embedding, and per layer the attention output and ff2: one stream
    x = load_arrays(SAMPLES / "test_parity.npz")["image"][:128]
    got = run(result.model, {"image": x})
    ref = run(models[1], {"image": x})["logits"]
    assert np.mean(got["parity/logits"].argmax(1) == ref.argmax(1)) >= 0.95


def test_bert_share0_reproduces_and_share_half_zips():
    models = [str(SAMPLES / "bert_a.onnx"), str(SAMPLES / "bert_b.onnx")]
    calib = load_arrays(SAMPLES / "calib_bert.npz")
    data = [{k: v[:64] for k, v in calib.items()}] * 2
    feeds = {k: v[64:96] for k, v in calib.items()}
    zero = zip_models(models, data, share=0.0, quiet=True, names=("a", "b"))
    rng = np.random.default_rng(9)
    other = {"input_ids": rng.integers(0, 100, (5, 19)), "attention_mask": np.ones((5, 19), np.int64)}
    for f in (feeds, other):  # the sequence length stays dynamic (calibrated on 12 tokens)
        got = run(zero.model, f)
        for t, m in zip("ab", models):
            np.testing.assert_allclose(got[f"{t}/logits"], run(m, f)["logits"], atol=1e-5)
    half = zip_models(models, data, share=0.5, quiet=True, names=("a", "b"))
    onnx.checker.check_model(half.model, full_check=True)
    assert half.report["equivalence_max_abs_diff"] <= 1e-4
    assert half.report["deployment_problems"] == []  # the sequence length of token ids may stay dynamic
    assert half.report["params_after"] < half.report["params_before"]
    ir = build_ir(onnx.load(models[0]), "a", models[0], 17)
    names = [[ir.layers[i].name for i in g] for g in ir.spaces.groups]
    stream = max(names, key=len)  # post-norm: the embeddings (word, position, token type), then attention
    # output and ff2 of both layers write the stream
    assert len(stream) == 7 and all("_embeddings/Gather" in n for n in stream[:3]) and \
        all("output/dense" in n for n in stream[3:])


def test_unzipped_operand_with_channels_is_sliced_exactly():
    """Sub(relu, x16): x16 is an input with all 16 channels in task order (tests/test_spaces.py)."""
    models = [graphs.mlp_with_channel_operand(1), graphs.mlp_with_channel_operand(2)]
    data = [{"x": graphs.data(3, (12,)), "x16": graphs.data(4, (16,))}] * 2
    for share in (0.0, 0.5):
        result = zip_models(models, data, share=share, quiet=True, names=("a", "b"))
        assert result.report["equivalence_max_abs_diff"] <= 1e-5
        if share == 0.0:
            feeds = {"x": graphs.data(5, (12,), n=8), "x16": graphs.data(6, (16,), n=8)}
            got = run(result.model, feeds)
            for t, m in zip("ab", models):
                np.testing.assert_allclose(got[f"{t}/y"], run(m, feeds)["y"], atol=1e-5)


def token_model(lead, dynamic: int) -> onnx.ModelProto:
    """y = MatMul(x, W) + b on x (lead..., 6) with ``dynamic`` leading dimensions left open."""
    rng = np.random.default_rng(0)
    dims = ["N", "T"][:dynamic] + list(lead[dynamic:])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"], name="mm"),
             helper.make_node("Add", ["xw", "b"], ["y"], name="add")]
    inits = [graphs._init("W", rng.normal(size=(6, 5)).astype(np.float32)),
             graphs._init("b", rng.normal(size=(5,)).astype(np.float32))]
    return graphs.model(nodes, inits, [graphs.inp("x", dims + [6])], [graphs.inp("y", None)])


@pytest.mark.parametrize("dynamic", [0, 1, 2])
def test_token_matmul_becomes_a_gemm_over_rows(dynamic):
    m = token_model((4, 3), dynamic)
    graph = prepare(m, 17, "t.onnx")
    normalize(graph)
    gemm = [n for n in graph.nodes if n.op == "Gemm"]
    assert len(gemm) == 1 and gemm[0].inputs[1].values.shape == (5, 6)  # the bias folded in, W as (out, in)
    assert not [n for n in graph.nodes if n.op in ("MatMul", "Add")]
    out = gs.export_onnx(graph)
    x = np.random.default_rng(1).normal(size=(4, 3, 6)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})["y"], run(m, {"x": x})["y"], rtol=1e-6, atol=1e-6)


def test_one_dynamic_reshape_dimension_folds_to_minus_one():
    """Reshape(x', Concat([3], Shape(x)[0], [4])): a batch size taken from another tensor becomes -1."""
    nodes = [helper.make_node("Shape", ["x"], ["sx"], name="shape"),
             helper.make_node("Gather", ["sx", "i0"], ["n"], name="g", axis=0),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"], name="u"),
             helper.make_node("Concat", ["c3", "n1", "c4"], ["target"], name="cat", axis=0),
             helper.make_node("Transpose", ["x"], ["xt"], name="t", perm=[1, 0, 2]),
             helper.make_node("Reshape", ["xt", "target"], ["y"], name="r")]
    inits = [numpy_helper.from_array(np.asarray(v, np.int64), k) for k, v in
             (("i0", 0), ("ax", [0]), ("c3", [3]), ("c4", [4]))]
    m = graphs.model(nodes, inits, [graphs.inp("x", ["N", 3, 4])], [graphs.inp("y", None)])
    graph = prepare(m, 17, "t.onnx")
    assert fold_reshape_shapes(graph) == 1
    r = next(n for n in graph.nodes if n.op == "Reshape")
    assert r.inputs[1].values.tolist() == [3, -1, 4]


def test_moved_axis():
    x = gs.Variable("x", np.float32, ["N", 17, 32])
    y = gs.Variable("y", np.float32, None)
    t = gs.Node("Transpose", "t", {"perm": [1, 0, 2]}, [x], [y])
    assert moved_axis(t, 3, 2) == 2 and moved_axis(t, 3, 1) == 0
    g = gs.Node("Gather", "g", {"axis": 1}, [x, gs.Constant("i", np.asarray(0, np.int64))], [y])
    assert moved_axis(g, 3, 2) == 1 and moved_axis(g, 3, 1) is None
    u = gs.Node("Unsqueeze", "u", {}, [x, gs.Constant("a", np.asarray([0], np.int64))], [y])
    assert moved_axis(u, 3, 2) == 3
    r = gs.Node("Reshape", "r", {}, [x, gs.Constant("s", np.asarray([-1, 32], np.int64))], [y])
    assert moved_axis(r, 3, 2) == 1
    r2 = gs.Node("Reshape", "r2", {}, [x, gs.Constant("s2", np.asarray([0, 17, 4, 8], np.int64))], [y])
    assert moved_axis(r2, 3, 2) is None  # the channels split into heads


def test_token_matmul_rule_does_not_touch_2d():
    graph = prepare(graphs.mlp(0, style="matmul"), 17, "t.onnx")
    assert token_matmul_to_gemm(graph) == 0


@pytest.mark.parametrize("decomposed", [True, False])
def test_token_block_keeps_its_stream_zipped(decomposed):
    """LayerNorm over the features (decomposed or the op), tanh GELU, a per-token position and a mean
    over tokens all run per part: nothing is restored, the embedding and ff2 share one matching."""
    ir = build_ir(graphs.token_block(0, decomposed=decomposed), "t", "t.onnx", 18)
    assert not ir.spaces.restore
    assert sorted(len(g) for g in ir.spaces.groups) == [1, 2]


def test_fixed_batch_token_model_uses_whole_batches():
    """A token-major model that fixes its batch at 4, given 6 samples: later stages cannot be padded
    (their tensors are token rows), so the zip keeps whole batches and stays exact."""
    models = []
    for seed in (0, 1):
        m = graphs.token_block(seed)
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
        models.append(m)
    data = [{"x": graphs.data(s, (3, 8, 8), n=6)} for s in (1, 2)]
    for share in (0.0, 0.5):
        r = zip_models(models, data, share=share, quiet=True, names=("a", "b"))
        assert r.report["equivalence_max_abs_diff"] <= 1e-5
        if share == 0.0:
            x = data[0]["x"][:4]
            np.testing.assert_allclose(run(r.model, {"x": x})["a/y"], run(models[0], {"x": x})["y"], atol=1e-5)


def test_operands_of_another_rank_are_not_joined():
    """(N, C, 1) + (N, C) broadcasts from the right into an outer sum over channels: restored."""
    m = graphs.mlp(0, sizes=(12, 8, 10, 3))
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    m.graph.initializer.append(numpy_helper.from_array(np.asarray([-1], np.int64), "ax1"))
    m.graph.node.append(helper.make_node("Unsqueeze", [relu.output[0], "ax1"], ["hu"], name="unsq"))
    m.graph.node.append(helper.make_node("Add", ["hu", relu.output[0]], ["outer"], name="outer"))
    m.graph.node.append(helper.make_node("ReduceMean", ["outer"], ["mixed"], name="mean", axes=[2], keepdims=0))
    for node in m.graph.node:
        if node.name == "drop":
            node.input[0] = "mixed"
    graph = gs.import_onnx(m)
    graph.toposort()
    m = gs.export_onnx(graph)
    ir = build_ir(m, "t", "t.onnx", 17)
    assert "outer" in ir.spaces.restore


@pytest.mark.parametrize("pair, data, writers", [("gpt2", "calib_gpt2.npz", 6), ("hfvit", "calib_hfvit.npz", 5)])
def test_more_transformers_pairs(pair, data, writers):
    """A GPT-2 decoder (Split of the fused Q/K/V, Conv1D as addmm, run-time Reshape targets that end
    in the feature count) and a transformers ViT (a Conv patch embedding flattened and transposed into
    tokens): share 0 reproduces them, share 0.5 passes its checks, the residual stream is one group
    (for the ViT it includes the Conv, for GPT-2 its token and position embeddings)."""
    models = [str(SAMPLES / f"{pair}_{t}.onnx") for t in "ab"]
    arrays = load_arrays(SAMPLES / data)
    calib = [{k: v[:48] for k, v in arrays.items()}] * 2
    feeds = {k: v[48:56] for k, v in arrays.items()}
    zero = zip_models(models, calib, share=0.0, quiet=True, names=("a", "b"))
    got = run(zero.model, feeds)
    for t, m in zip("ab", models):
        np.testing.assert_allclose(got[f"{t}/logits"], run(m, feeds)["logits"], atol=1e-5)
    half = zip_models(models, calib, share=0.5, quiet=True, names=("a", "b"))
    assert half.report["equivalence_max_abs_diff"] <= 1e-5 and half.report["deployment_problems"] == []
    assert max(len(x["layers"]) for x in half.report["groups"]) == writers


@pytest.mark.parametrize("model, fused, count", [("bert_a.onnx", False, 2), ("vit_digit.onnx", True, 2),
                                                 ("vit_digit_legacy.onnx", True, 2), ("gpt2_a.onnx", True, 2),
                                                 ("hfvit_a.onnx", False, 2), ("cnn_digit.onnx", None, 0)])
def test_attention_blocks_are_found(model, fused, count):
    from onnxzip.graph.attention import find_attention
    proto = onnx.load(str(SAMPLES / model))
    ir = build_ir(proto, "a", model, onnx_opset(proto))
    blocks = find_attention(ir)
    assert len(blocks) == count
    names = [layer.name for layer in ir.layers]
    for b in blocks:  # (a fused projection is split in three layers by normalization: F.q, F.k, F.v)
        assert len({b.q, b.k, b.v}) == 3 and b.out is not None
        assert all(names[i].endswith(f".{r}") for i, r in zip((b.q, b.k, b.v), "qkv")) == fused
        assert b.out > max(b.q, b.k, b.v) and ir.layers[b.out].neurons == ir.layers[b.v].neurons
