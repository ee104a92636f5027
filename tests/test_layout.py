"""onnxzip.sharing.layout, the owner of the zipped row and column order, against hand-built values.

Oracles: matrices and index arrays written out by hand (the bias last; each channel's kernel offsets
consecutive, ONNX's channel-major order); for :meth:`Matchings.column_order` on real aligned IRs
(graphs.cnn, graphs.resnet, graphs.inception and a graph with ALIGNED and PRIVATE Concat segments),
the order derived here from the layer's input channel segments as read off the graph by hand.
"""
import graphs
import numpy as np
import pytest

from onnxzip.errors import InternalError
from onnxzip.graph.align import align
from onnxzip.graph.ir import Layer
from onnxzip.sharing.layout import (
    Matchings,
    as_matrix,
    channel_order,
    effective,
    expand_channels,
    from_matrix,
    row_blocks,
)
from onnxzip.sharing.plan import LayerZip
from onnxzip.tasks import load_tasks


def conv_layer(shape):
    return Layer("c", "conv", "in", "out", "c.w", "c.b", tuple(shape))


def dense_layer(shape):
    return Layer("d", "dense", "in", "out", "d.w", "d.b", tuple(shape))


# ------------------------------------------------------------------ as_matrix / from_matrix

def test_as_matrix_puts_each_neurons_weights_channel_major_with_the_bias_last():
    w = np.arange(16, dtype=np.float32).reshape(2, 2, 2, 2)  # (out 2, in 2, 2x2 kernel)
    b = np.array([-1.0, -2.0], np.float32)
    m = as_matrix(w, b)
    assert m.dtype == np.float64 and m.shape == (2, 9)
    np.testing.assert_array_equal(m, [[0, 1, 2, 3, 4, 5, 6, 7, -1],
                                      [8, 9, 10, 11, 12, 13, 14, 15, -2]])


@pytest.mark.parametrize("shape", [(3, 5), (4, 2, 3, 3), (2, 3, 1, 1), (3, 2, 3)])
def test_from_matrix_inverts_as_matrix(shape):
    rng = np.random.default_rng(len(shape))
    w, b = rng.normal(size=shape), rng.normal(size=shape[0])
    layer = (dense_layer if len(shape) == 2 else conv_layer)(shape)
    w2, b2 = from_matrix(as_matrix(w, b), layer)
    assert w2.shape == w.shape and b2.shape == b.shape
    np.testing.assert_array_equal(w2, w)
    np.testing.assert_array_equal(b2, b)
    # and the other way: a hand matrix through from_matrix, back through as_matrix
    m = rng.normal(size=(shape[0], int(np.prod(shape[1:])) + 1))
    np.testing.assert_array_equal(as_matrix(*from_matrix(m, layer)), m)


def test_from_matrix_reads_the_bias_from_the_last_column():
    m = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0]])
    w, b = from_matrix(m, conv_layer((2, 1, 2, 2)))
    np.testing.assert_array_equal(w, [[[[1, 2], [3, 4]]], [[[6, 7], [8, 9]]]])
    np.testing.assert_array_equal(b, [5, 10])


# ------------------------------------------------------------------ expand_channels / channel_order

def test_expand_channels_on_hand_cases():
    np.testing.assert_array_equal(expand_channels(np.array([2, 0]), 3), [6, 7, 8, 0, 1, 2])
    np.testing.assert_array_equal(expand_channels([1, 3, 2], 1), [1, 3, 2])
    np.testing.assert_array_equal(expand_channels([4], 2), [8, 9])
    got = expand_channels(np.zeros(0, int), 9)
    assert got.size == 0 and got.dtype == np.int64


def test_channel_order_splits_a_conv_order_into_shared_and_private_channels():
    # 4 channels x kernel 2 (fan_in 8, bias column 8): shared channels 1, 3; private 2, 0
    order = np.array([2, 3, 6, 7, 8, 4, 5, 0, 1])
    sc, pc = channel_order(order, 5, 2)
    np.testing.assert_array_equal(sc, [1, 3])
    np.testing.assert_array_equal(pc, [2, 0])
    # nothing shared but the bias; everything shared
    sc, pc = channel_order(np.array([8, 2, 3, 0, 1, 6, 7, 4, 5]), 1, 2)
    assert sc.size == 0
    np.testing.assert_array_equal(pc, [1, 0, 3, 2])
    sc, pc = channel_order(np.array([0, 1, 2, 3, 4, 5, 6, 7, 8]), 9, 2)
    np.testing.assert_array_equal(sc, [0, 1, 2, 3])
    assert pc.size == 0


@pytest.mark.parametrize("order,ns", [
    ([2, 6, 3, 7, 8, 4, 5, 0, 1], 5),  # two channels' offsets interleaved among the shared columns
    ([3, 2, 6, 7, 8, 4, 5, 0, 1], 5),  # a channel's offsets reversed
    ([2, 3, 6, 7, 8, 4, 0, 5, 1], 5),  # interleaved among the private columns
    ([2, 3, 6, 7, 4, 8, 5, 0, 1], 5),  # the bias not right after the shared columns
    ([2, 3, 6, 8, 7, 4, 5, 0, 1], 4),  # a channel split across the shared/private boundary
])
def test_channel_order_raises_when_a_channels_offsets_are_not_kept_together(order, ns):
    with pytest.raises(InternalError, match="kernel offsets together"):
        channel_order(np.array(order), ns, 2)


# ------------------------------------------------------------------ effective / row_blocks

def test_effective_undoes_a_hand_permutation_of_rows_and_columns():
    # original (W, b) of a dense layer, 3 neurons x 2 inputs; matrix [w | b]
    original = np.array([[1.0, 2.0, 10.0],
                         [3.0, 4.0, 20.0],
                         [5.0, 6.0, 30.0]])
    layer = dense_layer((3, 2))
    rows = np.array([2, 0, 1])  # zipped row r holds original neuron rows[r]
    cols = np.array([1, 2, 0])  # zipped column c holds original column cols[c] (2: the bias)
    zipped = np.array([[6.0, 30.0, 5.0],  # neuron 2: w[2,1], b[2], w[2,0]
                       [2.0, 10.0, 1.0],
                       [4.0, 20.0, 3.0]])
    other = np.array([[9.0, 8.0, 7.0], [6.0, 5.0, 4.0], [3.0, 2.0, 1.0]])  # task 1: identity order
    z = LayerZip(0, 1, 2, [rows, np.arange(3)], [cols, np.arange(3)], [zipped, other], np.zeros(1))
    np.testing.assert_array_equal(zipped, original[np.ix_(rows, cols)])  # (the hand matrix, checked)
    w, b = effective(z, 0, layer)
    np.testing.assert_array_equal(w, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(b, [10, 20, 30])
    w, b = effective(z, 1, layer)
    np.testing.assert_array_equal(w, [[9, 8], [6, 5], [3, 2]])
    np.testing.assert_array_equal(b, [7, 4, 1])


def test_effective_of_a_conv_is_in_onnx_weight_shape():
    layer = conv_layer((2, 2, 1, 2))  # 2 neurons, 2 channels x 2 offsets: columns c0o0 c0o1 c1o0 c1o1 bias
    rows, cols = np.array([1, 0]), np.array([2, 3, 4, 0, 1])  # channel 1 shared, then the bias, channel 0
    zipped = np.array([[21.0, 22.0, 2.0, 11.0, 12.0],
                       [23.0, 24.0, 1.0, 13.0, 14.0]])
    z = LayerZip(0, 1, 3, [rows], [cols], [zipped], np.zeros(1))
    w, b = effective(z, 0, layer)
    np.testing.assert_array_equal(w, [[[[13, 14]], [[23, 24]]], [[[11, 12]], [[21, 22]]]])
    np.testing.assert_array_equal(b, [1, 2])


def test_row_blocks_list_private_rows_first_for_task_0_and_shared_rows_first_for_the_others():
    (r0, s0), (r1, s1) = row_blocks(2, 5, 0)
    assert (s0, s1) == (False, True)
    np.testing.assert_array_equal(r0, [2, 3, 4])
    np.testing.assert_array_equal(r1, [0, 1])
    for task in (1, 2):
        (r0, s0), (r1, s1) = row_blocks(2, 5, task)
        assert (s0, s1) == (True, False)
        np.testing.assert_array_equal(r0, [0, 1])
        np.testing.assert_array_equal(r1, [2, 3, 4])
    (r0, _), (r1, _) = row_blocks(0, 3, 1)  # nothing shared: an empty shared block
    assert r0.size == 0
    np.testing.assert_array_equal(r1, [0, 1, 2])


# ------------------------------------------------------------------ Matchings on real IRs

def aligned_irs(make, shape):
    _, irs, _ = load_tasks([make(1), make(2)], ["a", "b"], [{"x": graphs.data(s, shape, n=8)} for s in (3, 4)])
    return align(irs)


def spread(channels, per_channel):
    """Hand expansion: channel c -> columns c * per_channel + o for each offset o, in order."""
    return [c * per_channel + o for c in channels for o in range(per_channel)]


def mixed(seed, classes=3):
    """stem -> (br: 1x1 conv; LRN: restored, its output PRIVATE); Concat(br, x, LRN) -> mix (3x3);
    priv: a 1x1 conv of the LRN's (private) output, added to mix (tying priv and mix)."""
    n = graphs._Net(seed, 3)
    stem = n.conv("x", 3, 6, name="stem")
    lrn = n.op("LRN", [stem], size=3)
    br = n.conv(stem, 6, 4, k=1, name="br")
    cat = n.op("Concat", [br, "x", lrn], axis=1)
    y = n.conv(cat, 13, 5, name="mix")
    z = n.conv(lrn, 6, 5, k=1, name="priv")
    return n.head(n.op("Add", [y, z]), 5, classes)


def test_column_order_of_a_conv_reading_a_concat_of_three_hidden_layers():
    """graphs.inception: mix reads Concat(br1 (4 ch), br3 (5 ch), stem (6 ch)), kernel 3x3 = 9."""
    irs = aligned_irs(graphs.inception, (3, 8, 8))
    ir = irs[0]
    names = [layer.name for layer in ir.layers]
    assert names == ["stem", "br1", "br3", "mix", "head"] and ir.spaces.groups == [[0], [1], [2], [3]]
    mix = names.index("mix")
    rows = {0: [np.array([5, 0, 1, 2, 3, 4]), np.array([3, 1, 5, 0, 2, 4])],  # stem, k = 1
            1: [np.array([2, 0, 3, 1]), np.array([1, 3, 0, 2])],  # br1, k = 2
            2: [np.array([4, 1, 0, 2, 3]), np.array([0, 2, 4, 1, 3])]}  # br3, k = 3
    m = Matchings(ir.spaces.groups, [1, 2, 3, 4], rows)
    # the concat's channels: br1 at 0..3, br3 at 4..8, stem at 9..14; shared first in segment order
    expected = {0: ([2, 0, 8, 5, 4, 14], [3, 1, 6, 7, 9, 10, 11, 12, 13]),
                1: ([1, 3, 4, 6, 8, 12], [0, 2, 5, 7, 10, 14, 9, 11, 13])}
    for task, (shared, private) in expected.items():
        order, ns = m.column_order(ir, mix, task)
        assert ns == 6 * 9 + 1
        np.testing.assert_array_equal(order, spread(shared, 9) + [135] + spread(private, 9))
        assert sorted(order) == list(range(136))  # a permutation of every column and the bias
        sc, pc = channel_order(order, ns, 9)
        np.testing.assert_array_equal(sc, shared)
        np.testing.assert_array_equal(pc, private)


def test_column_order_of_a_dense_layer_after_flatten_spreads_each_channel_over_its_positions():
    """graphs.cnn: fc0 reads Flatten(conv1's 8 channels x 2 x 2): 4 columns per channel."""
    ir = aligned_irs(graphs.cnn, (3, 8, 8))[0]
    assert [layer.name for layer in ir.layers] == ["conv0", "conv1", "fc0", "fc1"]
    rows = {1: [np.array([7, 3, 0, 1, 2, 4, 5, 6]), np.array([0, 1, 2, 3, 4, 5, 6, 7])]}
    m = Matchings(ir.spaces.groups, [6, 3, 5], rows)
    order, ns = m.column_order(ir, 2, 0)
    assert ns == 13
    np.testing.assert_array_equal(order, [28, 29, 30, 31, 12, 13, 14, 15, 0, 1, 2, 3, 32, 4, 5, 6, 7, 8, 9, 10, 11,
                                          16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27])
    order, ns = m.column_order(ir, 2, 1)
    assert ns == 13
    np.testing.assert_array_equal(order, list(range(12)) + [32] + list(range(12, 32)))
    # conv0 reads the input image (no channel space): every column shared, the bias last
    order, ns = m.column_order(ir, 0, 1)
    assert ns == 28
    np.testing.assert_array_equal(order, list(range(28)))


def test_column_order_follows_the_group_of_tied_layers():
    """graphs.resnet: b2c1 reads the residual stream of stem+b1c2 (group 0); the head reads the one of
    b2proj+b2c2 (group 3): their columns follow those groups' matchings."""
    ir = aligned_irs(graphs.resnet, (3, 8, 8))[0]
    names = [layer.name for layer in ir.layers]
    assert ir.spaces.groups == [[0, 2], [1], [3], [4, 5]]
    b2c1, head = names.index("b2c1"), names.index("head")
    perm16 = [np.array([15, 14, 13, 12, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]), np.arange(16)]
    rows = {0: [np.array([6, 7, 0, 1, 2, 3, 4, 5]), np.array([1, 0, 2, 3, 4, 5, 6, 7])], 3: perm16}
    m = Matchings(ir.spaces.groups, [2, 4, 8, 3], rows)
    order, ns = m.column_order(ir, b2c1, 0)
    assert ns == 2 * 9 + 1
    np.testing.assert_array_equal(order, spread([6, 7], 9) + [72] + spread([0, 1, 2, 3, 4, 5], 9))
    order, ns = m.column_order(ir, b2c1, 1)
    np.testing.assert_array_equal(order, spread([1, 0], 9) + [72] + spread([2, 3, 4, 5, 6, 7], 9))
    order, ns = m.column_order(ir, head, 0)
    assert ns == 4
    np.testing.assert_array_equal(order, [15, 14, 13, 16, 12] + list(range(12)))


def test_column_order_with_aligned_and_private_segments():
    """mix reads Concat(br (hidden, 4 ch), x (ALIGNED, 3 ch), LRN (PRIVATE, 6 ch)): the image's
    channels are shared, the LRN's private; priv reads a PRIVATE tensor: only its bias is shared."""
    ir = aligned_irs(mixed, (3, 8, 8))[0]
    names = [layer.name for layer in ir.layers]
    assert names == ["stem", "br", "priv", "mix", "head"]
    assert ir.spaces.groups == [[0], [1], [2, 3]]
    mix, priv = names.index("mix"), names.index("priv")
    rows = {1: [np.array([3, 1, 0, 2]), np.array([0, 2, 1, 3])]}
    m = Matchings(ir.spaces.groups, [2, 1, 2], rows)
    order, ns = m.column_order(ir, mix, 0)
    assert ns == 4 * 9 + 1
    np.testing.assert_array_equal(order, spread([3, 4, 5, 6], 9) + [117] + spread([1, 0, 2, 7, 8, 9, 10, 11, 12], 9))
    order, ns = m.column_order(ir, mix, 1)
    np.testing.assert_array_equal(order, spread([0, 4, 5, 6], 9) + [117] + spread([2, 1, 3, 7, 8, 9, 10, 11, 12], 9))
    order, ns = m.column_order(ir, priv, 0)
    assert ns == 1
    np.testing.assert_array_equal(order, [6, 0, 1, 2, 3, 4, 5])


def test_decided_waits_for_every_group_feeding_the_layer():
    ir = aligned_irs(graphs.inception, (3, 8, 8))[0]
    m = Matchings(ir.spaces.groups, [1, 1, 1, 1])
    assert m.group_of == {0: 0, 1: 1, 2: 2, 3: 3}
    perm = [np.arange(8), np.arange(8)]
    assert m.decided(ir, 0)  # stem reads the image
    assert not m.decided(ir, 1) and not m.decided(ir, 3)
    m.rows[0] = perm
    assert m.decided(ir, 1) and m.decided(ir, 2)  # br1, br3 read the stem
    assert not m.decided(ir, 3)  # mix also reads br1 and br3
    m.rows[1] = perm
    assert not m.decided(ir, 3)
    m.rows[2] = perm
    assert m.decided(ir, 3) and not m.decided(ir, 4)  # the head reads mix
    m.rows[3] = perm
    assert m.decided(ir, 4)

    ir = aligned_irs(mixed, (3, 8, 8))[0]
    m = Matchings(ir.spaces.groups, [1, 1, 1])
    assert m.group_of == {0: 0, 1: 1, 2: 2, 3: 2}
    assert m.decided(ir, 2)  # priv reads a PRIVATE tensor: nothing to wait for
    assert not m.decided(ir, 3)
    m.rows[1] = perm
    assert m.decided(ir, 3)  # mix waits for br only (the image is ALIGNED, the LRN PRIVATE)
    assert not m.decided(ir, 4)  # the head reads the mix+priv stream: group 2
    m.rows[2] = perm
    assert m.decided(ir, 4)
