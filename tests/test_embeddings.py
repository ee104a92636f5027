"""Embedding tables as layers: ``Gather(table, ids)`` zipped like a dense layer on one-hot ids (its
neurons the table's columns), checked against ONNX Runtime runs of the originals, a numpy one-hot
statistic, and the ops the zipped graph holds."""
from __future__ import annotations

import graphs
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from conftest import SAMPLES
from onnx import TensorProto, helper, numpy_helper

from onnxzip.api import zip_models
from onnxzip.calibrate.stats import layer_hessian
from onnxzip.graph.ir import EMBEDDING_MAX_ROWS, build_ir

V, T, D = 11, 4, 6


def tagger(seed: int, rows: int = V, tied_head: bool = False) -> onnx.ModelProto:
    """ids (N, T) -> Gather(table (rows, D)) -> dense 8 -> Relu -> dense 3 per token; ``tied_head``:
    the table is also read by a MatMul (tied input and output embeddings: not a layer)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (rows, D)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.normal(0, 0.5, (D, 8)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (8, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.1, 3).astype(np.float32), "b2")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed", axis=0),
             helper.make_node("MatMul", ["e", "w1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1.add"),
             helper.make_node("Relu", ["h1"], ["h"], name="relu"),
             helper.make_node("MatMul", ["h", "w2"], ["y0"], name="fc2"),
             helper.make_node("Add", ["y0", "b2"], ["y"], name="fc2.add")]
    outputs = [graphs.inp("y", ["N", T, 3])]
    if tied_head:
        nodes.append(helper.make_node("MatMul", ["e", "table_t"], ["scores"], name="tied"))
        nodes.insert(0, helper.make_node("Transpose", ["table"], ["table_t"], name="t", perm=[1, 0]))
        outputs.append(graphs.inp("scores", ["N", T, rows]))
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", T])
    m = graphs.model(nodes, inits, [ids], outputs)
    g = gs.import_onnx(m)
    g.toposort()
    return gs.export_onnx(g)


def _ids(seed: int, n: int = 64, rows: int = V) -> dict[str, np.ndarray]:
    return {"ids": np.random.default_rng(seed).integers(0, rows, (n, T)).astype(np.int64)}


def test_a_gather_from_a_constant_table_is_an_embedding_layer():
    ir = build_ir(tagger(0), "a", "a.onnx", 17)
    layer = ir.layers[0]
    assert (layer.kind, layer.shape, layer.input, layer.neurons, layer.fan_in) == ("embedding", (D, V), "ids", D, V)
    w, b = ir.weights(layer)
    table = numpy_helper.to_array(next(i for i in tagger(0).graph.initializer if i.name == "table"))
    np.testing.assert_array_equal(w, table.T)
    assert not b.any()
    (name, stored), = layer.stored(w, b + 1.0)  # a bias is folded into every row
    assert name == layer.weight
    np.testing.assert_allclose(stored, table + 1.0)
    assert ir.spaces.layout[layer.output].axis == 2  # the table's columns are the last axis of (N, T, D)


def test_a_table_too_large_stays_an_ordinary_op():
    m = tagger(0, rows=EMBEDDING_MAX_ROWS + 1)
    assert [layer.kind for layer in build_ir(m, "a", "a.onnx", 17).layers] == ["dense", "dense"]


def test_a_table_also_read_transposed_by_a_head_zips_exactly_at_share_0():
    """Tied input and output embeddings: normalization folds the transposed copy into a constant of
    its own, so the Gather is an embedding layer and the head a dense layer; nothing is lost."""
    models = [tagger(5, tied_head=True), tagger(6, tied_head=True)]
    data = _ids(7, 64)
    result = zip_models(models, [data, data], share=0.0, quiet=True)
    x = _ids(8, 8)
    for t, m in enumerate(models):
        for out in ("y", "scores"):
            np.testing.assert_allclose(graphs.run(result.model, x, f"{result.names[t]}/{out}"),
                                       graphs.run(m, x, out), rtol=1e-5, atol=1e-5)


def test_the_embedding_statistic_is_the_one_hot_second_moment():
    """E[x x'] of x = (one-hot(id), 1): token frequencies on the diagonal and in the bias row."""
    ir = build_ir(tagger(0), "a", "a.onnx", 17)
    ids = _ids(1)["ids"]
    h = layer_hessian(ir.layers[0], [ids[:40], ids[40:]], "auto")
    freq = np.bincount(ids.reshape(-1), minlength=V) / ids.size
    want = np.zeros((V + 1, V + 1))
    want[np.arange(V), np.arange(V)] = freq
    want[:V, V] = want[V, :V] = freq
    want[V, V] = 1.0
    np.testing.assert_allclose(h, want, atol=1e-12)


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_zipped_taggers_match_their_originals_and_share_the_table(share):
    models = [tagger(1), tagger(2)]
    data = _ids(3, 96)
    result = zip_models(models, [data, data], share=share, quiet=True)
    x = _ids(4, 16)
    for t, m in enumerate(models):
        got, want = graphs.run(result.model, x, f"{result.names[t]}/y"), graphs.run(m, x)
        if share == 0.0:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    gathers = [n for n in result.model.graph.node if n.op_type == "Gather"]
    tables = {n.input[0] for n in gathers}
    if share == 1.0:  # one table, one Gather: the embedding (and all after it) computed once
        assert len(gathers) == 1 and len(tables) == 1
    assert result.plan.layers[0].shared == round(share * D)
    assert result.summary.equivalence.verdict == "ok"


def test_sample_bert_pair_at_share_1_runs_once():
    """The sample BERT pair's word, position and token-type tables are layers of the residual stream:
    at share 1 the zipped model holds the originals' LayerNorms and Softmaxes once."""
    models = [SAMPLES / "bert_a.onnx", SAMPLES / "bert_b.onnx"]
    result = zip_models(models, [SAMPLES / "calib_bert.npz"], share=1.0, quiet=True)
    original = onnx.load(models[0])
    for op in ("LayerNormalization", "Softmax"):
        assert sum(n.op_type == op for n in result.model.graph.node) == sum(n.op_type == op for n in original.graph.node)
    assert result.summary.equivalence.verdict == "ok"


def test_ids_never_seen_are_not_said_to_lack_rows(caplog):
    """A table of 11 rows read through 8 ids (2 samples of 4): fewer rows than the statistic's width,
    which for an embedding means unseen ids (merged to the tasks' mean), not too few samples: the
    embedding is not named (the dense layers after it may be)."""
    import logging
    data = {"ids": np.random.default_rng(9).integers(0, V, (2, T)).astype(np.int64)}
    with caplog.at_level(logging.WARNING):
        result = zip_models([tagger(1), tagger(2)], [data, data], share=0.5, quiet=True)
    said = [r.getMessage() for r in caplog.records if "fewer rows than their size" in r.getMessage()]
    assert not any("embed" in m for m in said)
    assert result.plan.layers[0].shared == 3
