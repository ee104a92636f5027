"""Attention blocks (onnxzip/graph/attention.py) against the graph walked independently.

Oracles: for the transformer samples, the ORIGINAL file (not onnxzip's normalized graph) is walked
here with plain onnx protos: every Softmax whose scores come from a MatMul of two computed operands
and whose probabilities feed a MatMul is a block; each operand is followed back to the first
MatMul/Gemm/Conv with a constant weight, the heads' result forward to the first such layer. The
layers onnxzip finds (named after the original nodes) must be exactly these, in Softmax order, and
must carry the exporter's own role names where it gives them (query/key/value, q_proj/..., c_attn).
Hand-built attention graphs, whose roles are fixed by construction (and checked against a numpy
attention in ONNX Runtime), pin the Q/K order, a fused projection and the absent output layer.
"""
from collections import defaultdict

import graphs
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from conftest import SAMPLES
from onnx import helper, numpy_helper

from onnxzip.graph.attention import AttentionBlock, describe_blocks, find_attention
from onnxzip.graph.ir import build_ir
from onnxzip.graph.normalize import onnx_opset

#: ops that carry a tensor's values along (their data input is the first one)
MOVING = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast", "Split", "Slice", "Gather",
          "Dropout"}
#: ops that combine their inputs elementwise (scaling, masking, biases) or join them (a key cache)
COMBINING = {"Mul", "Div", "Add", "Sub", "Where", "Concat"}


class Walker:
    """The attention blocks of an ONNX graph by node names, from its protos alone."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.nodes = list(g.node)
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers = defaultdict(list)
        for n in g.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.constants = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant"
                                                             for o in n.output}

    def is_layer(self, n: onnx.NodeProto) -> bool:
        return n.op_type in ("MatMul", "Gemm", "Conv") and n.input[1] in self.constants

    def data_inputs(self, n: onnx.NodeProto) -> list[str]:
        ins = n.input[1:] if n.op_type == "Where" else n.input[:1] if n.op_type in MOVING else n.input
        return [i for i in ins if i and i not in self.constants]

    def layer_before(self, name: str, depth: int = 0) -> str | None:
        """The one layer every data path from ``name`` back reaches first (None: none, or several)."""
        n = self.producer.get(name)
        if n is None or depth > 30:
            return None
        if self.is_layer(n):
            return n.name
        if n.op_type not in MOVING | COMBINING:
            return None
        found = {f for i in self.data_inputs(n) if (f := self.layer_before(i, depth + 1))}
        return found.pop() if len(found) == 1 else None

    def layer_after(self, name: str, depth: int = 0) -> str | None:
        for n in self.consumers.get(name, []):
            if self.is_layer(n) and n.input[0] == name:
                return n.name
            if n.op_type in {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast"} \
                    and depth < 30:
                found = self.layer_after(n.output[0], depth + 1)
                if found:
                    return found
        return None

    def score_matmul(self, name: str, depth: int = 0) -> onnx.NodeProto | None:
        n = self.producer.get(name)
        if n is None or depth > 10:
            return None
        if n.op_type == "MatMul":
            return n
        if n.op_type not in {"Mul", "Div", "Add", "Sub", "Where", "Cast"}:
            return None
        return next((m for i in self.data_inputs(n) if (m := self.score_matmul(i, depth + 1)) is not None), None)

    def blocks(self) -> list[tuple[str, str, str, str | None]]:
        out = []
        for n in self.nodes:
            if n.op_type != "Softmax":
                continue
            scores = self.score_matmul(n.input[0])
            probs = n.output[0]
            while len(self.consumers[probs]) == 1 and self.consumers[probs][0].op_type in ("Dropout", "Identity",
                                                                                            "Cast"):
                probs = self.consumers[probs][0].output[0]
            pv = [c for c in self.consumers[probs] if c.op_type == "MatMul" and c.input[0] == probs]
            if scores is None or not pv or any(i in self.constants for i in scores.input):
                continue
            out.append((self.layer_before(scores.input[0]), self.layer_before(scores.input[1]),
                        self.layer_before(pv[0].input[1]), self.layer_after(pv[0].output[0])))
        return out


def load(name: str):
    proto = onnx.load(str(SAMPLES / name))
    return proto, build_ir(proto, "a", name, onnx_opset(proto))


def named(ir, blocks: list[AttentionBlock]) -> list[tuple]:
    names = [layer.name for layer in ir.layers]
    return [(names[b.q], names[b.k], names[b.v], None if b.out is None else names[b.out]) for b in blocks]


def out_features(proto: onnx.ModelProto, node_name: str) -> int:
    """A MatMul/Gemm node's output features, from its weight initializer in the original file."""
    node = next(n for n in proto.graph.node if n.name == node_name)
    w = next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == node.input[1])
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    return w.shape[0] if trans_b else w.shape[1]


#: per sample: (blocks, fused Q/K/V, role words in the exporter's node names: Q, K, V, output)
SAMPLE_ROLES = {
    "bert_a.onnx": (2, False, ("self/query/", "self/key/", "self/value/", "attention/output/dense")),
    "hfvit_a.onnx": (2, False, ("q_proj", "k_proj", "v_proj", "o_proj")),
    "gpt2_a.onnx": (2, True, ("attn/c_attn", "attn/c_attn", "attn/c_attn", "attn/c_proj")),
    "vit_digit_legacy.onnx": (2, True, ("self_attn/MatMul",) * 3 + ("self_attn/Gemm",)),
    "vit_digit.onnx": (2, True, None),  # (dynamo's node names carry no roles)
}


@pytest.mark.parametrize("sample", sorted(SAMPLE_ROLES))
def test_samples_blocks_are_the_ones_walked_in_the_original_file(sample):
    proto, ir = load(sample)
    count, fused, roles = SAMPLE_ROLES[sample]
    assert sum(n.op_type == "Softmax" for n in proto.graph.node) == count  # every Softmax is attention here
    expected = Walker(proto).blocks()
    assert len(expected) == count and all(None not in b for b in expected)  # (the walk itself found them all)
    blocks = find_attention(ir)
    # (a fused projection is split in three layers by normalization: F.q, F.k, F.v)
    assert named(ir, blocks) == [(f"{q}.q", f"{k}.k", f"{v}.v", out) if fused else (q, k, v, out)
                                 for q, k, v, out in expected]
    for b, (q, k, v, out) in zip(blocks, expected):
        assert len({b.q, b.k, b.v}) == 3
        # the output projection reads the heads' result: as many inputs as V makes features per head set
        assert ir.layers[b.out].shape[1] == out_features(proto, v) // (3 if fused else 1)
        assert ir.layers[b.out].neurons == out_features(proto, out)
        if roles is not None:
            for name, word in zip((q, k, v, out), roles):
                assert word in name, (name, word)
    # the blocks follow the graph: layer 0's block first, its layers before the next block's
    assert [b.q for b in blocks] == sorted(b.q for b in blocks) and blocks[0].out < blocks[1].q


@pytest.mark.parametrize("sample", sorted(SAMPLE_ROLES))
def test_samples_describe_blocks_exact_lines(sample):
    proto, ir = load(sample)
    lines = []
    for q, k, v, out in Walker(proto).blocks():
        head = f"Q {q}.q, K {k}.k, V {v}.v" if q == k == v else f"Q {q}, K {k}, V {v}"  # (fused: split in three)
        lines.append(f"{head} -> output {out}")
    assert describe_blocks(ir, find_attention(ir)) == lines


def test_bert_block_layer_indices():
    """BERT layers in graph order: the word, position and token-type embeddings, then per encoder
    layer query, key, value, attention output, two FFN."""
    _, ir = load("bert_a.onnx")
    assert [layer.kind for layer in ir.layers[:4]] == ["embedding"] * 3 + ["dense"]
    assert find_attention(ir) == [AttentionBlock(3, 4, 5, 6), AttentionBlock(9, 10, 11, 12)]


@pytest.mark.parametrize("model", ["cnn_digit.onnx", "mlp_digit.onnx", "resnet_digit.onnx"])
def test_samples_without_attention_have_no_blocks(model):
    proto, ir = load(model)
    assert sum(n.op_type == "Softmax" for n in proto.graph.node) == len(Walker(proto).blocks()) == 0
    assert find_attention(ir) == [] and describe_blocks(ir, []) == []


def test_a_softmax_classifier_head_is_not_attention():
    m = graphs.convnet(0)  # ... Gemm -> Softmax -> output
    assert sum(n.op_type == "Softmax" for n in m.graph.node) == 1
    assert find_attention(build_ir(m, "a", "a.onnx", 17)) == []


# --- hand-built single-head attention on tokens (N, T, D) ---------------------------------------

T, D = 5, 8


def _w(name: str, a) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def attention(seed: int, relu_before_out: bool = False, fused: bool = False, constant_keys: bool = False,
              gate: str | None = None, residual_before_out: bool = False
              ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """y = (softmax(q k' / sqrt(D)) v) Wo + bo on x (N, T, D), every projection MatMul + Add.

    The K projection is built first and named ``lin_a``, Q ``lin_b``, V ``lin_c`` (graph order is not
    role order); ``fused``: one projection ``qkv`` (D -> 3D) split into Q, K, V; ``constant_keys``:
    the scores multiply Q with a constant matrix (not attention); ``relu_before_out``: a Relu between
    the heads' result and the output layer; ``residual_before_out``: the heads' result is added to x
    (a residual join, no output projection) before the next layer reads it; ``gate``: "first" or
    "last": Q is multiplied by a second graph input ``gate`` (N, 1, 1), given as Mul's first or
    second operand. Returns the model and its
    weights by role (for the numpy reference)."""
    rng = np.random.default_rng(seed)
    nodes, inits, weights = [], [], {}

    def proj(name, role, width):
        w, b = rng.normal(0, 0.4, (D, width)), rng.normal(0, 0.1, width)
        weights[role] = (w, b)
        inits.extend([_w(f"{name}.w", w), _w(f"{name}.b", b)])
        nodes.extend([helper.make_node("MatMul", ["x", f"{name}.w"], [f"{name}.mm"], name=name),
                      helper.make_node("Add", [f"{name}.mm", f"{name}.b"], [role], name=f"{name}.add")])

    if fused:
        proj("qkv", "qkv", 3 * D)
        inits.append(numpy_helper.from_array(np.array([D, D, D], np.int64), "sizes"))
        nodes.append(helper.make_node("Split", ["qkv", "sizes"], ["q", "k", "v"], name="split", axis=-1))
    else:
        proj("lin_a", "k", D)
        proj("lin_b", "q" if gate is None else "q_pre", D)
        proj("lin_c", "v", D)
        if gate is not None:
            ins = ["gate", "q_pre"] if gate == "first" else ["q_pre", "gate"]
            nodes.append(helper.make_node("Mul", ins, ["q"], name="gating"))
    if constant_keys:
        inits.append(_w("keys", rng.normal(0, 0.4, (D, T))))
        nodes.append(helper.make_node("MatMul", ["q", "keys"], ["s0"], name="scores"))
    else:
        nodes.append(helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]))
        nodes.append(helper.make_node("MatMul", ["q", "kt"], ["s0"], name="scores"))
    inits.append(_w("scale", np.array(1 / np.sqrt(D))))
    nodes += [helper.make_node("Mul", ["s0", "scale"], ["s"], name="scale"),
              helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["p", "v"], ["o"], name="pv")]
    x = "o"
    if relu_before_out:
        nodes.append(helper.make_node("Relu", ["o"], ["o_r"], name="relu"))
        x = "o_r"
    if residual_before_out:
        nodes.append(helper.make_node("Add", ["o", "x"], ["o_x"], name="residual"))
        x = "o_x"
    wo, bo = rng.normal(0, 0.4, (D, D)), rng.normal(0, 0.1, D)
    weights["out"] = (wo, bo)
    inits += [_w("out.w", wo), _w("out.b", bo)]
    nodes += [helper.make_node("MatMul", [x, "out.w"], ["out.mm"], name="out"),
              helper.make_node("Add", ["out.mm", "out.b"], ["y"], name="out.add")]
    inputs = [graphs.inp("x", ["N", T, D])] + ([graphs.inp("gate", ["N", 1, 1])] if gate else [])
    m = graphs.model(nodes, inits, inputs, [graphs.inp("y", ["N", T, D])])
    g = gs.import_onnx(m)
    g.toposort()
    m = gs.export_onnx(g)
    m.opset_import[0].version = 17
    onnx.checker.check_model(m)
    return m, weights


def numpy_attention(x: np.ndarray, weights: dict, fused: bool) -> np.ndarray:
    def lin(a, role):
        w, b = weights[role]
        return a @ w + b
    if fused:
        q, k, v = np.split(lin(x, "qkv"), 3, axis=-1)
    else:
        q, k, v = lin(x, "q"), lin(x, "k"), lin(x, "v")
    s = q @ np.swapaxes(k, 1, 2) / np.sqrt(D)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return lin(p @ v, "out")


@pytest.mark.parametrize("fused", [False, True])
def test_hand_built_roles_follow_the_operands_not_the_graph_order(fused):
    m, weights = attention(0, fused=fused)
    x = graphs.data(1, (T, D), n=4)
    # the graph is the attention we say it is (so lin_b really is Q, lin_a K)
    np.testing.assert_allclose(graphs.run(m, {"x": x}), numpy_attention(x.astype(np.float64), weights, fused),
                               rtol=1e-4, atol=1e-5)
    ir = build_ir(m, "a", "a.onnx", 17)
    names = [layer.name for layer in ir.layers]
    blocks = find_attention(ir)
    if fused:  # (split in three layers by normalization; their Concat is the fused tensor)
        assert names == ["qkv.q", "qkv.k", "qkv.v", "out"]
        assert blocks == [AttentionBlock(0, 1, 2, 3)]
        assert describe_blocks(ir, blocks) == ["Q qkv.q, K qkv.k, V qkv.v -> output out"]
    else:
        assert names == ["lin_a", "lin_b", "lin_c", "out"]
        assert blocks == [AttentionBlock(q=1, k=0, v=2, out=3)]
        assert describe_blocks(ir, blocks) == ["Q lin_b, K lin_a, V lin_c -> output out"]
    walked = [(f"{q}.q", f"{k}.k", f"{v}.v", out) if fused else (q, k, v, out) for q, k, v, out in Walker(m).blocks()]
    assert walked == named(ir, blocks)


def test_hand_built_output_layer_behind_a_relu_is_none():
    m, _ = attention(1, relu_before_out=True)
    ir = build_ir(m, "a", "a.onnx", 17)
    blocks = find_attention(ir)
    assert blocks == [AttentionBlock(q=1, k=0, v=2, out=None)]
    assert describe_blocks(ir, blocks) == ["Q lin_b, K lin_a, V lin_c"]  # no "-> output" part


def test_hand_built_output_layer_behind_a_residual_join_is_none():
    """The layer after Add(heads' result, x) reads the residual stream, not the heads: no output layer."""
    m, _ = attention(6, residual_before_out=True)
    blocks = find_attention(build_ir(m, "a", "a.onnx", 17))
    assert blocks == [AttentionBlock(q=1, k=0, v=2, out=None)]
    assert Walker(m).blocks() == [("lin_b", "lin_a", "lin_c", None)]


def test_hand_built_scores_against_a_constant_are_not_attention():
    m, _ = attention(2, constant_keys=True)
    assert Walker(m).blocks() == []
    assert find_attention(build_ir(m, "a", "a.onnx", 17)) == []


def test_hand_built_two_blocks_in_sequence():
    """Two attention blocks chained (the first one's y is the second one's x): two blocks, in order."""
    a, _ = attention(3)
    b, _ = attention(4)
    b = onnx.compose.add_prefix(b, "b.")
    merged = onnx.compose.merge_models(a, b, io_map=[("y", "b.x")])
    ir = build_ir(merged, "a", "a.onnx", 17)
    names = [layer.name for layer in ir.layers]
    assert names == ["lin_a", "lin_b", "lin_c", "out", "b.lin_a", "b.lin_b", "b.lin_c", "b.out"]
    assert find_attention(ir) == [AttentionBlock(1, 0, 2, 3), AttentionBlock(5, 4, 6, 7)]
    assert Walker(merged).blocks() == named(ir, find_attention(ir))


def test_hand_built_gated_query_as_second_operand_is_found():
    m, _ = attention(5, gate="last")  # q = Mul(q_pre, gate)
    assert Walker(m).blocks() == [("lin_b", "lin_a", "lin_c", "out")]
    assert find_attention(build_ir(m, "a", "a.onnx", 17)) == [AttentionBlock(q=1, k=0, v=2, out=3)]


def test_hand_built_gated_query_as_first_operand_is_found():
    m, _ = attention(5, gate="first")  # q = Mul(gate, q_pre): the same product, operands swapped
    assert Walker(m).blocks() == [("lin_b", "lin_a", "lin_c", "out")]
    assert find_attention(build_ir(m, "a", "a.onnx", 17)) == [AttentionBlock(q=1, k=0, v=2, out=3)]
