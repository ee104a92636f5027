"""Tied attention heads: whole-head matching against brute force, the proof on samples against a core
that does not treat heads alike, and zipped models whose attention runs on the zipped Q, K and V
(checked against each original in ONNX Runtime and by the ops the zipped graph holds)."""
from __future__ import annotations

import itertools

import graphs
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from conftest import SAMPLES
from onnx import helper, numpy_helper

from onnxzip.api import zip_models
from onnxzip.check.heads import failing, head_permutation, permuted, prove_heads
from onnxzip.graph.ir import build_ir
from onnxzip.sharing.assign import MATCHERS, match_units

T, DIN, HEADS, WIDTH = 5, 6, 2, 4
D = HEADS * WIDTH


def _w(name: str, a) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def multi_head(seed: int, head_bias: bool = False) -> onnx.ModelProto:
    """x (N, T, 6) -> dense 8 -> Q, K, V (8 = 2 heads x 4) -> attention -> output dense 8 -> Relu ->
    dense 3. ``head_bias``: the scores get a constant temperature per head (a core that does not
    treat heads alike; an additive bias per head would not show: softmax ignores it)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def dense(name, x, y, d_in, d_out):
        inits.extend([_w(f"{name}.w", rng.normal(0, 0.5, (d_in, d_out))), _w(f"{name}.b", rng.normal(0, 0.1, d_out))])
        nodes.extend([helper.make_node("MatMul", [x, f"{name}.w"], [f"{name}.mm"], name=name),
                      helper.make_node("Add", [f"{name}.mm", f"{name}.b"], [y], name=f"{name}.add")])

    dense("pre", "x", "h", DIN, D)
    for role in "qkv":
        dense(role, "h", role, D, D)
    inits.append(numpy_helper.from_array(np.array([0, 0, HEADS, WIDTH], np.int64), "split_heads"))
    inits.append(numpy_helper.from_array(np.array([0, 0, D], np.int64), "merge_heads"))
    for role, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("Reshape", [role, "split_heads"], [f"{role}4"], name=f"{role}.split"),
                  helper.make_node("Transpose", [f"{role}4"], [f"{role}t"], name=f"{role}.t", perm=perm)]
    inits.append(_w("scale", np.array(1 / np.sqrt(WIDTH))))
    nodes += [helper.make_node("MatMul", ["qt", "kt"], ["s0"], name="scores"),
              helper.make_node("Mul", ["s0", "scale"], ["s1"], name="scaled")]
    s = "s1"
    if head_bias:
        inits.append(_w("head_scale", np.arange(1, HEADS + 1, dtype=np.float32).reshape(1, HEADS, 1, 1) * 2.0))
        nodes.append(helper.make_node("Mul", ["s1", "head_scale"], ["s2"], name="tempered"))
        s = "s2"
    nodes += [helper.make_node("Softmax", [s], ["p"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["p", "vt"], ["o4"], name="pv"),
              helper.make_node("Transpose", ["o4"], ["o3"], name="o.t", perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["o3", "merge_heads"], ["o"], name="o.merge")]
    dense("out", "o", "z", D, D)
    nodes.append(helper.make_node("Relu", ["z"], ["zr"], name="relu"))
    dense("head", "zr", "y", D, 3)
    m = graphs.model(nodes, inits, [graphs.inp("x", ["N", T, DIN])], [graphs.inp("y", ["N", T, 3])])
    g = gs.import_onnx(m)
    g.toposort()
    m = gs.export_onnx(g)
    m.opset_import[0].version = 17
    onnx.checker.check_model(m)
    return m


def _data(seed: int, n: int = 48) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(0, 1, (n, T, DIN)).astype(np.float32)}


def _brute(c: np.ndarray, k: int, unit: int) -> float:
    """The least total cost of ``k`` pairs that pair whole units (each unit pair one-to-one within)."""
    na, nb = c.shape[0] // unit, c.shape[1] // unit
    best = np.inf
    for ua in itertools.combinations(range(na), k // unit):
        for ub in itertools.permutations(range(nb), k // unit):
            total = 0.0
            for a, b in zip(ua, ub):
                block = c[a * unit:(a + 1) * unit, b * unit:(b + 1) * unit]
                total += min(sum(block[i, p[i]] for i in range(unit)) for p in itertools.permutations(range(unit)))
            best = min(best, total)
    return best


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape,k,unit", [((6, 6), 3, 3), ((6, 6), 6, 3), ((4, 6), 2, 2), ((6, 4), 4, 2)])
def test_unit_matching_is_the_brute_force_optimum_and_keeps_units_whole(seed, shape, k, unit):
    c = np.random.default_rng(seed).normal(size=shape)
    i0, i1, _ = match_units(MATCHERS.get("optimal"), c, k, unit)
    assert len(i0) == len(i1) == k and len(set(i0)) == len(set(i1)) == k
    assert c[i0, i1].sum() == pytest.approx(_brute(c, k, unit))
    for s in range(0, k, unit):  # every `unit` consecutive slots hold one unit of each side
        assert len(set(i0[s:s + unit] // unit)) == 1 and len(set(i1[s:s + unit] // unit)) == 1


def test_unit_matching_refuses_a_part_of_a_unit():
    with pytest.raises(ValueError):
        match_units(MATCHERS.get("optimal"), np.zeros((4, 4)), 3, 2)


def test_tied_structure_and_proof_on_a_hand_built_block():
    ir = build_ir(multi_head(0), "a", "a.onnx", 17)
    (h,) = ir.spaces.heads
    names = [layer.name for layer in ir.layers]
    assert (names[h.q], names[h.k], names[h.v], names[h.out], h.heads, h.width) == ("q", "k", "v", "out", 2, 4)
    assert [names[i] for i in ir.spaces.groups[1]] == ["q", "k", "v"]  # one matching
    assert not ir.spaces.restore
    assert failing(ir, _data(0)) == set()


def test_a_per_head_constant_fails_the_proof_and_unties_the_block():
    ir = build_ir(multi_head(0, head_bias=True), "a", "a.onnx", 17)
    assert len(ir.spaces.heads) == 1  # the structure alone does not see the per-head bias
    assert failing(ir, _data(0)) == {ir.spaces.heads[0].q}
    (untied,) = prove_heads([ir], [_data(0)])
    assert untied.spaces.heads == [] and untied.spaces.restore  # the core reads each task's own order again


def test_the_permuted_model_differs_when_the_permutation_splits_heads():
    """The proof can fail: channels moved across heads (not whole heads) change the outputs."""
    ir = build_ir(multi_head(1), "a", "a.onnx", 17)
    (h,) = ir.spaces.heads
    x = _data(1, 4)
    base = graphs.run(ir.to_onnx(), x)
    whole = graphs.run(permuted(ir, [h], {h.q: head_permutation(2, 4, np.random.default_rng(3))}), x)
    np.testing.assert_allclose(whole, base, rtol=1e-4, atol=1e-5)
    split = graphs.run(permuted(ir, [h], {h.q: np.array([0, 4, 1, 5, 2, 6, 3, 7])}), x)
    assert np.abs(split - base).max() > 1e-2


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_zipped_attention_matches_the_originals_and_shares_whole_heads(share):
    models = [multi_head(10), multi_head(11)]
    data = _data(5, 64)
    result = zip_models(models, [data, data], share=share, quiet=True)
    x = {"x": data["x"][:16]}
    for t, m in enumerate(models):
        got, want = graphs.run(result.model, x, f"{result.names[t]}/y"), graphs.run(m, x)
        if share == 0.0:  # nothing shared: each original, to float noise
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        else:  # shared: near the original (the zip's own verdicts judge how near)
            assert np.abs(got - want).max() < np.abs(want).max()
    z = result.plan.layers[1]  # (layers: pre, q, k, v, out, head)
    assert z.shared == round(share * HEADS) * WIDTH
    for rows in z.rows:  # every head's 4 slots are one original head's channels
        assert all(len(set(rows[s:s + WIDTH] // WIDTH)) == 1 for s in range(0, D, WIDTH))
    softmaxes = sum(n.op_type == "Softmax" for n in result.model.graph.node)
    gathers = sum(n.op_type == "Gather" for n in result.model.graph.node)
    assert gathers == 0  # no channel order restored
    assert softmaxes == (1 if share == 1.0 else 2)  # all shared on one input: attention computed once


def test_sample_bert_pair_ties_its_heads_and_keeps_its_verdicts():
    result = zip_models([SAMPLES / "bert_a.onnx", SAMPLES / "bert_b.onnx"], [SAMPLES / "calib_bert.npz"], share=0.5,
                        quiet=True)
    assert len(result.plan.groups) == 6  # Q, K, V of each block one group
    assert all(t.verdict == "ok" for t in result.summary.tasks)
    assert result.summary.equivalence.verdict == "ok"


@pytest.mark.parametrize("heads,width", [(2, 4), (3, 1), (1, 5), (12, 64)])
def test_head_permutation_moves_every_head_and_every_channel_and_keeps_heads_whole(heads, width):
    p = head_permutation(heads, width, np.random.default_rng(heads * width))
    assert sorted(p) == list(range(heads * width))
    blocks = p.reshape(heads, width) // width
    assert (blocks == blocks[:, :1]).all()  # each new head is one old head
    if heads > 1:
        assert (blocks[:, 0] != np.arange(heads)).all()
    if width > 1:
        assert (p.reshape(heads, width) % width != np.arange(width)).all()


def _ops(model: onnx.ModelProto, op: str) -> int:
    return sum(n.op_type == op for n in model.graph.node)


@pytest.mark.parametrize("share,separate", [(1.0, False), (1.0, True), (0.5, False)])
def test_sample_hf_vit_pair_computes_a_fully_shared_encoder_once(share, separate):
    """On one input at share 1, the class token, position embedding and LayerNorm constants are
    merged, so the whole encoder is one computation (the originals' op counts, once); with separate
    inputs, or a part shared, every task keeps its own constants and runs its own attention."""
    models = [SAMPLES / "hfvit_a.onnx", SAMPLES / "hfvit_b.onnx"]
    result = zip_models(models, [SAMPLES / "calib_hfvit.npz"], share=share, separate_inputs=separate, quiet=True)
    original = onnx.load(models[0])
    once = share == 1.0 and not separate
    for op in ("Softmax", "LayerNormalization"):
        assert _ops(result.model, op) == _ops(original, op) * (1 if once else 2), op
    assert bool(result.plan.constants[0]) == once
    assert result.summary.equivalence.verdict == "ok"


def test_a_fused_projection_is_split_in_three_layers_computing_the_same():
    """The sample ViT's fused Q/K/V projection (96 = 3 x 32) becomes three layers joined by a Concat:
    the normalized graph still computes the original's outputs (ONNX Runtime, held-out digits)."""
    proto = onnx.load(SAMPLES / "vit_digit.onnx")
    ir = build_ir(proto, "a", "vit_digit.onnx", 20)
    names = [layer.name for layer in ir.layers]
    assert [n for n in names if n.startswith("node_MatMul_22")] == [f"node_MatMul_22.{r}" for r in "qkv"]
    assert all(ir.layers[names.index(f"node_MatMul_22.{r}")].neurons == 32 for r in "qkv")
    x = {"image": np.load(SAMPLES / "test_digit.npz")["image"][:64]}
    np.testing.assert_allclose(graphs.run(ir.to_onnx(), x), graphs.run(proto, x), rtol=1e-5, atol=1e-5)
    assert len(ir.spaces.heads) == 2 and not ir.spaces.restore  # both blocks' heads tied


def test_a_class_token_runs_in_the_stage_that_joins_it():
    """Nodes of graph inputs and constants only (the class token spread over the batch) move to
    their first reader, after the patch embedding's cut, so merging its constant reaches them."""
    from onnxzip.calibrate.stages import StagedNetwork
    proto = onnx.load(SAMPLES / "vit_digit.onnx")
    ir = build_ir(proto, "a", "vit_digit.onnx", 20)
    net = StagedNetwork(ir, ir.hidden)
    where = {n.name: i for i, n in enumerate(net.nodes)}
    expand = next(n.name for n in ir.graph.nodes if n.op == "Expand")
    assert where[expand] > net.bounds[1]  # after the first layer's cut (the patch embedding)
    assert [n.name for n in net.nodes if n.name in {x.name for x in ir.layers}] == [x.name for x in ir.layers]


def test_a_budget_shares_whole_heads_and_reports_what_it_shared():
    models = [SAMPLES / "vit_digit.onnx", SAMPLES / "vit_parity.onnx"]
    data = [SAMPLES / "calib_digit.npz", SAMPLES / "calib_parity.npz"]
    result = zip_models(models, data, target_params=0.6, quiet=True)
    ir = build_ir(onnx.load(models[0]), "a", "a.onnx", 20)
    counts = result.summary.budget.counts
    for g, members in enumerate(ir.spaces.groups):
        unit = ir.spaces.unit(members[0])
        assert counts[g] % unit == 0
        assert all(result.plan.layers[i].shared == counts[g] for i in members)  # the report says what was shared
    assert any(ir.spaces.unit(m[0]) == 8 for m in ir.spaces.groups)
