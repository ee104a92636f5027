"""Channel spaces on known graphs: which tensors carry which layer's channels, and what is restored."""
import onnx_graphsurgeon as gs

import graphs
from onnxzip.ir import build_ir
from onnxzip.spaces import broadcasts_channels


def test_decomposed_layernorm_keeps_the_channels_zipped():
    ir = build_ir(graphs.ln_mlp(0), "t", "t.onnx", 18)
    names = [layer.name for layer in ir.layers]
    assert not ir.spaces.restore  # nothing restored to task order
    fc1 = ir.layers[names.index("fc1")]
    space = ir.spaces.layout[fc1.input]  # fc1 reads LayerNorm(fc0) through Relu
    assert [s.layer for s in space.segments] == [names.index("fc0")] and space.channels == 12
    means = [n.outputs[0].name for n in ir.graph.nodes if n.op == "ReduceMean"]
    assert means and not any(m in ir.spaces.layout or m in ir.spaces.private for m in means)  # no channels
    assert [[names[i] for i in g] for g in ir.spaces.groups] == [["fc0"], ["fc1"]]


def test_layernormalization_op_and_instancenorm_pass_channels_through():
    ir = build_ir(graphs.ln_mlp_op(0), "t", "t.onnx", 18)
    ln = [n for n in ir.graph.nodes if n.op == "LayerNormalization"]
    assert len(ln) == 2 and all(n.outputs[0].name in ir.spaces.layout for n in ln) and not ir.spaces.restore
    ir = build_ir(graphs.instnorm_cnn(0), "t", "t.onnx", 17)
    inorm = next(n for n in ir.graph.nodes if n.op == "InstanceNormalization")
    assert inorm.outputs[0].name in ir.spaces.layout and not ir.spaces.restore


def test_broadcasts_channels():
    rank = 4
    assert broadcasts_channels(gs.Variable("a", shape=[2, 1, 5, 5]), rank)
    assert broadcasts_channels(gs.Variable("b", shape=[5, 5]), rank)
    assert not broadcasts_channels(gs.Variable("c", shape=[2, 3, 5, 5]), rank)
    assert not broadcasts_channels(gs.Variable("d"), rank)  # unknown shape: not assumed


def test_a_channel_mixing_operand_is_restored():
    """Sub(x, y) with y an unzipped tensor that has channels of its own cannot run per part."""
    from onnx import helper
    m = graphs.mlp(0, sizes=(12, 16, 10, 3))
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    m.graph.node.append(helper.make_node("Sub", [relu.output[0], "x16"], ["sub"], name="mix"))
    m.graph.input.append(graphs.inp("x16", ["N", 16]))
    for node in m.graph.node:
        if node.name == "drop":
            node.input[0] = "sub"
    ir = build_ir(m, "t", "t.onnx", 17)
    assert "mix" in ir.spaces.restore
