"""Channel spaces on known graphs: which tensors carry which layer's channels, and what is restored."""
import graphs
import onnx_graphsurgeon as gs

from onnxzip.graph.ir import build_ir
from onnxzip.graph.spaces import broadcasts_channels


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


def test_an_unzipped_operand_with_channels_is_sliced():
    """Sub(x, y) with y an unzipped tensor that has all of x's channels (in task order) runs per
    part, y cut to each part's channels (tests/test_transformers.py checks the emitted model)."""
    ir = build_ir(graphs.mlp_with_channel_operand(0), "t", "t.onnx", 17)
    assert "mix" not in ir.spaces.restore and "sub" in ir.spaces.layout


# ---------------------------------------------------------------------------------------------
# Whole graphs, with the expected spaces derived by reading the builders in graphs.py.

def named(ir):
    """Groups, followers and restored nodes by name, hidden layers by name."""
    names = [layer.name for layer in ir.layers]
    return (names, [[names[i] for i in g] for g in ir.spaces.groups], sorted(names[i] for i in ir.spaces.followers),
            ir.spaces.restore, sorted(names[i] for i in ir.spaces.hidden))


def segments(ir, tensor):
    names = [layer.name for layer in ir.layers]
    space = ir.spaces.layout[tensor]
    return [(names[s.layer] if s.layer >= 0 else s.layer, s.count) for s in space.segments], space.block


def test_resnet_residual_adds_tie_the_layers_writing_into_each_stream():
    """graphs.resnet: stem -> [b1c1 -> b1c2] + stem (Add, Relu) -> [b2c1 -> b2c2] + b2proj (Add,
    Relu) -> GAP -> head. The first Add joins b1c2's output with the stem's (through its Relu): one
    stream, one matching. The second joins b2c2 and the projection b2proj. b1c1 and b2c1 write
    only inside their block; the head reaches no layer (not hidden). No depthwise, nothing odd."""
    ir = build_ir(graphs.resnet(0), "t", "t.onnx", 17)
    names, groups, followers, restore, hidden = named(ir)
    assert sorted(map(sorted, groups)) == [["b1c1"], ["b1c2", "stem"], ["b2c1"], ["b2c2", "b2proj"]]
    for g in groups:  # members listed in topological order
        assert [names.index(n) for n in g] == sorted(names.index(n) for n in g)
    assert sorted(g[0] for g in groups) == sorted(["stem", "b1c1", "b2c1", min(["b2c2", "b2proj"], key=names.index)])
    assert followers == [] and restore == {} and not ir.spaces.private
    assert hidden == sorted(["stem", "b1c1", "b1c2", "b2c1", "b2c2", "b2proj"])
    head = ir.layers[names.index("head")]
    # the head reads the second stream after GAP + Flatten: 16 channels named by that group, 1 feature each
    first = min(["b2c2", "b2proj"], key=names.index)
    assert segments(ir, head.input) == ([(first, 16)], 1)
    b2c1 = ir.layers[names.index("b2c1")]
    assert segments(ir, b2c1.input) == ([("stem", 8)], 1)  # the first stream, after the Add and Relu


def test_inception_concat_builds_a_space_from_blocks_without_ties():
    """graphs.inception: stem (6) feeds br1 (4, 1x1) and br3 (5, 3x3); Concat(br1, br3, stem) (15)
    feeds mix (8). Concat only lists blocks: every layer is its own group."""
    ir = build_ir(graphs.inception(0), "t", "t.onnx", 17)
    names, groups, followers, restore, hidden = named(ir)
    assert sorted(map(sorted, groups)) == [["br1"], ["br3"], ["mix"], ["stem"]]
    assert followers == [] and restore == {}
    assert hidden == ["br1", "br3", "mix", "stem"]
    mix = ir.layers[names.index("mix")]
    assert segments(ir, mix.input) == ([("br1", 4), ("br3", 5), ("stem", 6)], 1)
    assert mix.shape == (8, 15, 3, 3)


def test_mobilenet_depthwise_convs_follow_their_inputs_matching():
    """graphs.mobilenet: stem (8) -> dw1 (depthwise 8) -> BN (kept, after the Relu) -> pw1 (12, 1x1)
    -> dw2 (depthwise 12, stride 2) -> pw2 (16, 1x1) -> head. The depthwise convs take no matching
    of their own: dw1 follows the stem, dw2 follows pw1. The kept BN runs per channel."""
    ir = build_ir(graphs.mobilenet(0), "t", "t.onnx", 17)
    names, groups, followers, restore, hidden = named(ir)
    assert groups == [["stem"], ["pw1"], ["pw2"]]
    assert followers == ["dw1", "dw2"] and restore == {}
    assert hidden == ["dw1", "dw2", "pw1", "pw2", "stem"]
    assert [ir.layers[names.index(n)].kind for n in ("dw1", "dw2")] == ["depthwise", "depthwise"]
    assert segments(ir, ir.layers[names.index("pw1")].input) == ([("stem", 8)], 1)  # through dw1 and the BN
    assert segments(ir, ir.layers[names.index("pw2")].input) == ([("pw1", 12)], 1)  # through dw2
    assert segments(ir, ir.layers[names.index("head")].input) == ([("pw2", 16)], 1)


def test_grouped_conv_is_restored_and_its_consumer_reads_a_private_input():
    """graphs.grouped_residual: stem (8) -> r1 -> r2, Add(r2, stem) ties r2 to the stem; a depthwise
    dw on that stream follows the stem's group; then a grouped conv (group 2: it mixes channels
    within halves, which onnxzip does not model) gets its input restored to task order, so its
    output is private and c2 reads a private input. c2 is still a hidden layer (it feeds the head)."""
    ir = build_ir(graphs.grouped_residual(0), "t", "t.onnx", 17)
    names, groups, followers, restore, hidden = named(ir)
    assert "grouped" not in names  # a grouped conv is an ordinary op, not a layer
    assert sorted(map(sorted, groups)) == [["c2"], ["r1"], ["r2", "stem"]]
    assert followers == ["dw"] and restore == {"grouped": [0]}
    assert hidden == ["c2", "dw", "r1", "r2", "stem"]
    c2 = ir.layers[names.index("c2")]
    assert c2.input in ir.spaces.private and c2.input not in ir.spaces.layout
    grouped = next(n for n in ir.graph.nodes if n.name == "grouped")
    assert segments(ir, grouped.inputs[0].name) == ([("stem", 8)], 1)  # dw's output: the stem's channels


def test_layernorm_marks_the_layers_it_normalizes():
    """graphs.ln_mlp: fc0 and fc1 are each read by a (decomposed) LayerNorm over their 12 channels,
    the head by nothing: both hidden layers are 'normalized', each its own group."""
    ir = build_ir(graphs.ln_mlp(0), "t", "t.onnx", 18)
    names = [layer.name for layer in ir.layers]
    assert sorted(names[i] for i in ir.spaces.normalized) == ["fc0", "fc1"]
    ir = build_ir(graphs.ln_mlp_op(0), "t", "t.onnx", 18)
    names = [layer.name for layer in ir.layers]
    assert sorted(names[i] for i in ir.spaces.normalized) == ["fc0", "fc1"]
