"""Tiny seeded ONNX models built in code, for tests."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def model(nodes, inits, inputs, outputs, opset: int = 17, ir_version: int = 8) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir_version
    return m


def inp(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def mlp(seed: int, sizes=(12, 16, 10, 3), style: str = "gemm", opset: int = 17) -> onnx.ModelProto:
    """Dense net on (N, sizes[0]). style: 'gemm' (transB=1), 'gemm_t' (transB=0, alpha/beta),
    'matmul' (MatMul + Add), with Relu between layers and a Dropout + Identity thrown in."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = rng.normal(0, 1 / np.sqrt(a), (b, a))
        bias = rng.normal(0, 0.1, b)
        y = f"h{i}"
        if style == "gemm":
            inits += [_init(f"w{i}", w), _init(f"b{i}", bias)]
            nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [y], name=f"fc{i}", transB=1))
        elif style == "gemm_t":
            inits += [_init(f"w{i}", w.T / 2.0), _init(f"b{i}", bias[None, :] / 4.0)]
            nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [y], name=f"fc{i}", alpha=2.0, beta=4.0))
        else:
            inits += [_init(f"w{i}", w.T), _init(f"b{i}", bias)]
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [y + "_mm"], name=f"mm{i}"))
            nodes.append(helper.make_node("Add", [y + "_mm", f"b{i}"], [y], name=f"add{i}"))
        x = y
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [x], [x + "_r"], name=f"relu{i}"))
            x += "_r"
            if i == 0:
                nodes.append(helper.make_node("Dropout", [x], [x + "_d"], name="drop"))
                nodes.append(helper.make_node("Identity", [x + "_d"], [x + "_d_i"], name="ident"))
                x += "_d_i"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    return model(nodes, inits, [inp("x", ["N", sizes[0]])], [inp("y", ["N", sizes[-1]])], opset=opset)


def cnn(seed: int, channels=(3, 6, 8), hidden: int = 10, classes: int = 4, bn: bool = True,
        bias: bool = True, opset: int = 17, reshape: bool = False, scale: bool = False,
        features: bool = False) -> onnx.ModelProto:
    """Conv(+BN)-Relu-MaxPool x2 -> Flatten (or Reshape) -> Gemm-Relu -> Gemm, input (N, C, 8, 8).

    ``scale``: a per-channel Mul and a scalar Add after the first block; ``features``: the first
    block's activations are a second graph output."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    for i, (a, b) in enumerate(zip(channels[:-1], channels[1:])):
        inits.append(_init(f"cw{i}", rng.normal(0, 1 / np.sqrt(9 * a), (b, a, 3, 3))))
        ins = [x, f"cw{i}"]
        if bias:
            inits.append(_init(f"cb{i}", rng.normal(0, 0.1, b)))
            ins.append(f"cb{i}")
        nodes.append(helper.make_node("Conv", ins, [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1],
                                      kernel_shape=[3, 3], strides=[1, 1]))
        y = f"c{i}"
        if bn:
            inits += [_init(f"s{i}", rng.uniform(0.5, 1.5, b)), _init(f"t{i}", rng.normal(0, 0.1, b)),
                      _init(f"m{i}", rng.normal(0, 0.1, b)), _init(f"v{i}", rng.uniform(0.5, 1.5, b))]
            nodes.append(helper.make_node("BatchNormalization", [y, f"s{i}", f"t{i}", f"m{i}", f"v{i}"], [f"bn{i}"],
                                          name=f"bn{i}", epsilon=1e-5))
            y = f"bn{i}"
        nodes.append(helper.make_node("Relu", [y], [f"r{i}"], name=f"relu{i}"))
        nodes.append(helper.make_node("MaxPool", [f"r{i}"], [f"p{i}"], name=f"pool{i}", kernel_shape=[2, 2],
                                      strides=[2, 2]))
        x = f"p{i}"
        if scale and i == 0:
            inits += [_init("chs", rng.uniform(0.5, 2.0, (1, b, 1, 1))), _init("one", np.array(1.0))]
            nodes += [helper.make_node("Mul", ["chs", x], ["scaled"], name="chscale"),
                      helper.make_node("Add", ["scaled", "one"], ["shifted"], name="shift")]
            x = "shifted"
    feat = channels[-1] * 2 * 2
    if reshape:
        inits.append(numpy_helper.from_array(np.array([-1, feat], np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", [x, "shape"], ["flat"], name="reshape"))
    else:
        nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    inits += [_init("fw0", rng.normal(0, 1 / np.sqrt(feat), (hidden, feat))), _init("fb0", rng.normal(0, .1, hidden)),
              _init("fw1", rng.normal(0, 1 / np.sqrt(hidden), (classes, hidden))),
              _init("fb1", rng.normal(0, .1, classes))]
    nodes += [helper.make_node("Gemm", ["flat", "fw0", "fb0"], ["f0"], name="fc0", transB=1),
              helper.make_node("Relu", ["f0"], ["f0r"], name="relu_fc"),
              helper.make_node("Gemm", ["f0r", "fw1", "fb1"], ["y"], name="fc1", transB=1)]
    outputs = [inp("y", ["N", classes])] + ([inp("r0", ["N", channels[1], 8, 8])] if features else [])
    return model(nodes, inits, [inp("x", ["N", channels[0], 8, 8])], outputs, opset=opset)


def data(seed: int, shape, n: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n,) + tuple(shape)).astype(np.float32)


def run(m: onnx.ModelProto, feeds: dict, output: str | None = None) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([output] if output else None, feeds)[0]


def convnet(seed: int, classes: int = 3, **conv_attrs) -> onnx.ModelProto:
    """Conv(conv_attrs)-LeakyRelu-Conv-Sigmoid-GlobalAveragePool-Flatten-Gemm on (N, 2, 9, 9)."""
    rng = np.random.default_rng(seed)
    kernel = conv_attrs.pop("kernel_shape", [3, 3])
    inits = [_init("w0", rng.normal(0, 0.3, (5, 2) + tuple(kernel))), _init("w1", rng.normal(0, 0.3, (4, 5, 1, 1))),
             _init("b1", rng.normal(0, 0.1, 4)), _init("wh", rng.normal(0, 0.5, (classes, 4))),
             _init("bh", rng.normal(0, 0.1, classes))]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", kernel_shape=kernel, **conv_attrs),
             helper.make_node("LeakyRelu", ["c0"], ["a0"], name="act0", alpha=0.1),
             helper.make_node("Conv", ["a0", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[1, 1]),
             helper.make_node("Sigmoid", ["c1"], ["a1"], name="act1"),
             helper.make_node("GlobalAveragePool", ["a1"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "wh", "bh"], ["logits"], name="head", transB=1),
             helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1)]
    return model(nodes, inits, [inp("x", ["N", 2, 9, 9])], [inp("y", ["N", classes])])


class _Net:
    """A small builder for conv nets in tests (NCHW, seeded weights)."""

    def __init__(self, seed: int, channels: int, size: int = 8):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0
        self.x, self.c, self.size = "x", channels, size

    def _name(self, op):
        self.n += 1
        return f"{op}{self.n}"

    def conv(self, x, c_in, c_out, k=3, stride=1, group=1, bn=False, relu=True, name=None):
        name = name or self._name("conv")
        w = self.rng.normal(0, np.sqrt(2 / (k * k * c_in / group)), (c_out, c_in // group, k, k))
        self.inits += [_init(f"{name}.w", w), _init(f"{name}.b", self.rng.normal(0, 0.1, c_out))]
        self.nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], name=name,
                                           kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride],
                                           group=group))
        y = name
        if bn:
            y = self.bn(y, c_out)
        if relu:
            self.nodes.append(helper.make_node("Relu", [y], [y + ".r"], name=y + ".relu"))
            y += ".r"
        return y

    def bn(self, x, c):
        name = self._name("bn")
        r = self.rng
        self.inits += [_init(f"{name}.s", r.uniform(0.5, 1.5, c)), _init(f"{name}.t", r.normal(0, .1, c)),
                       _init(f"{name}.m", r.normal(0, .1, c)), _init(f"{name}.v", r.uniform(0.5, 1.5, c))]
        self.nodes.append(helper.make_node("BatchNormalization", [x] + [f"{name}.{k}" for k in "stmv"], [name],
                                           name=name))
        return name

    def op(self, op, inputs, **attrs):
        name = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def head(self, x, c, classes):
        g = self.op("GlobalAveragePool", [x])
        f = self.op("Flatten", [g], axis=1)
        self.inits += [_init("head.w", self.rng.normal(0, 1 / np.sqrt(c), (classes, c))),
                       _init("head.b", self.rng.normal(0, .1, classes))]
        self.nodes.append(helper.make_node("Gemm", [f, "head.w", "head.b"], ["y"], name="head", transB=1))
        return model(self.nodes, self.inits, [inp("x", ["N", self.c, self.size, self.size])],
                     [inp("y", ["N", classes])])


def resnet(seed: int, classes: int = 4) -> onnx.ModelProto:
    """Stem, an identity block, a projection block (stride 2); BN everywhere (folded)."""
    n = _Net(seed, 3)
    stem = n.conv("x", 3, 8, bn=True, name="stem")
    a = n.conv(stem, 8, 8, bn=True, name="b1c1")
    b = n.conv(a, 8, 8, bn=True, relu=False, name="b1c2")
    y = n.op("Relu", [n.op("Add", [b, stem])])
    a = n.conv(y, 8, 16, stride=2, bn=True, name="b2c1")
    b = n.conv(a, 16, 16, bn=True, relu=False, name="b2c2")
    p = n.conv(y, 8, 16, k=1, stride=2, bn=True, relu=False, name="b2proj")
    y = n.op("Relu", [n.op("Add", [p, b])])
    return n.head(y, 16, classes)


def inception(seed: int, classes: int = 3) -> onnx.ModelProto:
    """Stem, two branches and the stem itself concatenated (Inception/DenseNet style), then a conv."""
    n = _Net(seed, 3)
    stem = n.conv("x", 3, 6, name="stem")
    a = n.conv(stem, 6, 4, k=1, name="br1")
    b = n.conv(stem, 6, 5, name="br3")
    cat = n.op("Concat", [a, b, stem], axis=1)
    y = n.conv(cat, 15, 8, name="mix")
    return n.head(y, 8, classes)


def mobilenet(seed: int, classes: int = 3) -> onnx.ModelProto:
    """Depthwise-separable blocks: depthwise 3x3 (BN kept after ReLU) + pointwise 1x1."""
    n = _Net(seed, 3)
    y = n.conv("x", 3, 8, name="stem")
    y = n.conv(y, 8, 8, group=8, name="dw1")
    y = n.bn(y, 8)  # after the ReLU: kept, not folded
    y = n.conv(y, 8, 12, k=1, name="pw1")
    y = n.conv(y, 12, 12, group=12, stride=2, name="dw2")
    y = n.conv(y, 12, 16, k=1, name="pw2")
    return n.head(y, 16, classes)


def plain_bn(seed: int, classes: int = 3) -> onnx.ModelProto:
    """A plain CNN whose BatchNormalizations follow the ReLU (kept, not folded)."""
    n = _Net(seed, 3)
    y = n.bn(n.conv("x", 3, 8, name="c1"), 8)
    y = n.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = n.bn(n.conv(y, 8, 12, name="c2"), 12)
    return n.head(y, 12, classes)


def shape_ops(seed: int, classes: int = 3) -> onnx.ModelProto:
    """Pad, Resize and a Transpose of the spatial axes between two convs."""
    n = _Net(seed, 3)
    y = n.conv("x", 3, 6, name="c1")
    n.inits += [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
                numpy_helper.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "scales")]
    y = n.op("Pad", [y, "pads"])
    y = n.op("Resize", [y, "", "scales"], mode="nearest")
    y = n.op("Transpose", [y], perm=[0, 1, 3, 2])
    y = n.conv(y, 6, 8, name="c2")
    return n.head(y, 8, classes)


def reshape_reduce(seed: int, classes: int = 3) -> onnx.ModelProto:
    """conv -> Reshape (N, C, H*W) -> ReduceMean over axis 2 -> Gemm."""
    n = _Net(seed, 3)
    y = n.conv("x", 3, 6, name="c1")
    n.inits.append(numpy_helper.from_array(np.array([0, 6, -1], np.int64), "flat_hw"))
    y = n.op("Reshape", [y, "flat_hw"])
    y = n.op("ReduceMean", [y], axes=[2], keepdims=0)
    n.inits += [_init("head.w", n.rng.normal(0, 0.4, (classes, 6))), _init("head.b", n.rng.normal(0, .1, classes))]
    n.nodes.append(helper.make_node("Gemm", [y, "head.w", "head.b"], ["y"], name="head", transB=1))
    return model(n.nodes, n.inits, [inp("x", ["N", 3, 8, 8])], [inp("y", ["N", classes])])


def _layernorm(n: _Net, x: str, c: int, decomposed: bool, axes=(-1,)) -> str:
    """LayerNorm over ``axes`` with per-channel gamma/beta: the op, or torch's opset-13 export."""
    name = n._name("ln")
    n.inits += [_init(f"{name}.g", n.rng.uniform(0.5, 1.5, c)), _init(f"{name}.b", n.rng.normal(0, 0.1, c))]
    if not decomposed:
        return n.op("LayerNormalization", [x, f"{name}.g", f"{name}.b"], axis=-1, epsilon=1e-5)
    n.inits += [numpy_helper.from_array(np.array(list(axes), np.int64), f"{name}.axes"),
                _init(f"{name}.two", np.array(2.0)), _init(f"{name}.eps", np.array(1e-5))]
    mean = n.op("ReduceMean", [x, f"{name}.axes"], keepdims=1)
    d = n.op("Sub", [x, mean])
    var = n.op("ReduceMean", [n.op("Pow", [d, f"{name}.two"]), f"{name}.axes"], keepdims=1)
    std = n.op("Sqrt", [n.op("Add", [var, f"{name}.eps"])])
    return n.op("Add", [n.op("Mul", [n.op("Div", [d, std]), f"{name}.g"]), f"{name}.b"])


def ln_mlp(seed: int, classes: int = 3, decomposed: bool = True, hidden: int = 12) -> onnx.ModelProto:
    """Flatten -> (Gemm -> LayerNorm -> Relu) x2 -> Gemm -> Sigmoid on (N, 3, 8, 8); LayerNorm as
    the opset-17 op or decomposed (ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add, opset 18 axes inputs)."""
    n = _Net(seed, 3)
    y = n.op("Flatten", ["x"], axis=1)
    width = 3 * 8 * 8
    for i in range(2):
        n.inits += [_init(f"fc{i}.w", n.rng.normal(0, 1 / np.sqrt(width), (hidden, width))),
                    _init(f"fc{i}.b", n.rng.normal(0, 0.3, hidden))]
        n.nodes.append(helper.make_node("Gemm", [y, f"fc{i}.w", f"fc{i}.b"], [f"fc{i}"], name=f"fc{i}", transB=1))
        y = n.op("Relu", [_layernorm(n, f"fc{i}", hidden, decomposed)])
        width = hidden
    n.inits += [_init("head.w", n.rng.normal(0, 1 / np.sqrt(hidden), (classes, hidden))),
                _init("head.b", n.rng.normal(0, .1, classes))]
    n.nodes.append(helper.make_node("Gemm", [y, "head.w", "head.b"], ["logits"], name="head", transB=1))
    n.nodes.append(helper.make_node("Sigmoid", ["logits"], ["y"], name="sigmoid"))
    return model(n.nodes, n.inits, [inp("x", ["N", 3, 8, 8])], [inp("y", ["N", classes])], opset=18)


def ln_mlp_op(seed: int, classes: int = 3) -> onnx.ModelProto:
    return ln_mlp(seed, classes, decomposed=False)


def instnorm_cnn(seed: int, classes: int = 3) -> onnx.ModelProto:
    """conv -> InstanceNormalization -> Relu -> conv -> LayerNorm over (C, H, W) (decomposed) -> head."""
    n = _Net(seed, 3)
    y = n.conv("x", 3, 6, relu=False, name="c1")
    n.inits += [_init("in.s", n.rng.uniform(0.5, 1.5, 6)), _init("in.b", n.rng.normal(0, 0.1, 6))]
    y = n.op("Relu", [n.op("InstanceNormalization", [y, "in.s", "in.b"], epsilon=1e-5)])
    y = n.conv(y, 6, 8, relu=False, name="c2")
    mean = n.op("ReduceMean", [y], axes=[1, 2, 3], keepdims=1)
    y = n.op("Relu", [n.op("Sub", [y, mean])])
    return n.head(y, 8, classes)


def ln_spatial(seed: int, classes: int = 3, scale_shape=(8, 8), mean_output: bool = False) -> onnx.ModelProto:
    """conv (8 channels on 8x8 maps) -> LayerNormalization over (C, H, W) with a scale of
    ``scale_shape`` (broadcast: e.g. (H, W), whose first axis has the channel count's size) -> conv;
    ``mean_output``: LayerNorm's Mean is a graph output too."""
    n = _Net(seed, 3)
    y = n.conv("x", 3, 8, relu=False, name="c1")
    n.inits += [_init("ln.g", n.rng.uniform(0.5, 1.5, scale_shape)), _init("ln.b", n.rng.normal(0, 0.1, scale_shape))]
    outs = ["ln", "ln.mean"] if mean_output else ["ln"]
    n.nodes.append(helper.make_node("LayerNormalization", [y, "ln.g", "ln.b"], outs, name="ln", axis=1))
    y = n.conv(n.op("Relu", ["ln"]), 8, 6, name="c2")
    m = n.head(y, 6, classes)
    if mean_output:
        m.graph.output.append(inp("ln.mean", ["N", 1, 1, 1]))
    return m


def grouped_residual(seed: int, classes: int = 3) -> onnx.ModelProto:
    """stem -> grouped conv (group 2, not depthwise) -> conv c2, plus a residual block whose second
    conv is tied to the stem and a depthwise conv on the residual stream (input (N, 3, 8, 8))."""
    n = _Net(seed, 3)
    stem = n.conv("x", 3, 8, name="stem")
    a = n.conv(stem, 8, 8, name="r1")
    b = n.conv(a, 8, 8, relu=False, name="r2")
    y = n.op("Relu", [n.op("Add", [b, stem])])
    y = n.conv(y, 8, 8, group=8, name="dw")
    g = n.conv(y, 8, 8, group=2, name="grouped")
    y = n.conv(g, 8, 6, name="c2")
    return n.head(y, 6, classes)


def token_block(seed: int, classes: int = 3, decomposed: bool = True) -> onnx.ModelProto:
    """A pre-norm transformer feed-forward block on tokens: (N, 3, 8, 8) read as 3 tokens of 64
    features -> MatMul 64-16 (+ a learned position per token) -> [LayerNorm -> MatMul 16-24 ->
    GELU (tanh form) -> MatMul 24-16] + residual -> LayerNorm -> mean over tokens -> Gemm head.
    LayerNorm decomposed (opset-18 ReduceMean over the last axis) or the op."""
    n = _Net(seed, 3)
    r = n.rng

    def dense(x, a, b, name):
        n.inits += [_init(f"{name}.w", r.normal(0, 1 / np.sqrt(a), (a, b))), _init(f"{name}.b", r.normal(0, .1, b))]
        return n.op("Add", [n.op("MatMul", [x, f"{name}.w"]), f"{name}.b"])

    n.inits += [numpy_helper.from_array(np.array([0, 3, 64], np.int64), "tokens"),
                _init("pos", r.normal(0, .1, (1, 3, 16))), _init("c.half", np.array(0.5)),
                _init("c.one", np.array(1.0)), _init("c.k", np.array(0.044715)), _init("c.s", np.array(0.7978845608)),
                _init("c.three", np.array(3.0))]
    x = n.op("Add", [dense(n.op("Reshape", ["x", "tokens"]), 64, 16, "embed"), "pos"])
    h = dense(_layernorm(n, x, 16, decomposed), 16, 24, "ff1")
    inner = n.op("Mul", [n.op("Add", [h, n.op("Mul", [n.op("Pow", [h, "c.three"]), "c.k"])]), "c.s"])
    h = n.op("Mul", [n.op("Mul", [h, "c.half"]), n.op("Add", [n.op("Tanh", [inner]), "c.one"])])
    x = n.op("Add", [x, dense(h, 24, 16, "ff2")])
    n.inits.append(numpy_helper.from_array(np.array([1], np.int64), "token.axis"))
    y = n.op("ReduceMean", [_layernorm(n, x, 16, decomposed), "token.axis"], keepdims=0)
    n.inits += [_init("head.w", r.normal(0, 0.4, (classes, 16))), _init("head.b", r.normal(0, .1, classes))]
    n.nodes.append(helper.make_node("Gemm", [y, "head.w", "head.b"], ["y"], name="head", transB=1))
    return model(n.nodes, n.inits, [inp("x", ["N", 3, 8, 8])], [inp("y", ["N", classes])], opset=18)


def mlp_with_channel_operand(seed: int) -> onnx.ModelProto:
    """:func:`mlp` (12-16-10-3) whose first hidden layer's output gets Sub(h, x16): x16 a second input
    with all 16 channels (in task order), not a layer output."""
    m = mlp(seed, sizes=(12, 16, 10, 3))
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    m.graph.node.append(helper.make_node("Sub", [relu.output[0], "x16"], ["sub"], name="mix"))
    m.graph.input.append(inp("x16", ["N", 16]))
    for node in m.graph.node:
        if node.name == "drop":
            node.input[0] = "sub"
    return m


def edited(m: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``m`` with the named initializers replaced."""
    m = onnx.ModelProto.FromString(m.SerializeToString())
    for init in m.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(np.asarray(values[init.name], np.float32), init.name))
    return m
