"""ImageNet-size models with random weights, built in code (no downloads): ResNet-50 and VGG-16.

The graphs are what a framework export looks like (Conv + BatchNormalization + Relu, residual Add,
MaxPool, GlobalAveragePool, Flatten, Gemm), 3x224x224 input, 1000 classes. Weights are He-scaled;
each residual block's last BatchNorm has a small scale so that a random ResNet's activations stay
bounded over its 16 blocks (as zero-init-residual training recipes start).

``python tools/big_models.py OUT_DIR [--external]`` writes ``resnet50_a/b.onnx`` and ``vgg16_a/b.onnx``
(``--external``: weights in one external-data file next to each model).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
RESNET50 = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, first stride)


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, value: np.ndarray, prefix: str) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv(self, x: str, c_in: int, c_out: int, k: int, stride: int = 1, bias: bool = False) -> str:
        w = self.rng.normal(0, np.sqrt(2.0 / (c_in * k * k)), (c_out, c_in, k, k))
        inputs = [x, self.const(w, "w")] + ([self.const(self.rng.normal(0, 0.01, c_out), "b")] if bias else [])
        out = self.name("conv")
        self.nodes.append(helper.make_node("Conv", inputs, [out], kernel_shape=[k, k], strides=[stride, stride],
                                           pads=[k // 2] * 4))
        return out

    def bn(self, x: str, c: int, scale: float = 1.0) -> str:
        r = self.rng
        params = [r.uniform(0.5, 1.0, c) * scale, r.normal(0, 0.05, c), r.normal(0, 0.05, c), r.uniform(0.5, 1.5, c)]
        out = self.name("bn")
        self.nodes.append(helper.make_node("BatchNormalization", [x] + [self.const(p, "bn") for p in params], [out]))
        return out

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def dense(self, x: str, d: int, n: int) -> str:
        w = self.const(self.rng.normal(0, np.sqrt(2.0 / d), (n, d)), "fc")
        b = self.const(self.rng.normal(0, 0.01, n), "fcb")
        return self.op("Gemm", [x, w, b], transB=1)

    def model(self, x: str, graph_name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name,
                                  [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
                                  [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 1000])], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model


def resnet50(seed: int) -> onnx.ModelProto:
    """torchvision's ResNet-50 layout (bottlenecks 1x1-3x3-1x1, stride on the 3x3, projection shortcuts)."""
    b = _Builder(seed)
    x = b.op("Relu", [b.bn(b.conv("input", 3, 64, 7, 2), 64)])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = 64
    for width, blocks, stride in RESNET50:
        for i in range(blocks):
            s = stride if i == 0 else 1
            y = b.op("Relu", [b.bn(b.conv(x, c, width, 1), width)])
            y = b.op("Relu", [b.bn(b.conv(y, width, width, 3, s), width)])
            y = b.bn(b.conv(y, width, 4 * width, 1), 4 * width, scale=0.2)
            short = b.bn(b.conv(x, c, 4 * width, 1, s), 4 * width) if i == 0 else x
            x, c = b.op("Relu", [b.op("Add", [y, short])]), 4 * width
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])], axis=1)
    return b.model(b.dense(x, c, 1000), "resnet50")


def vgg16(seed: int) -> onnx.ModelProto:
    """torchvision's VGG-16 (no BN): 13 3x3 convs with bias, fc6 25,088 -> 4,096, fc7, fc8 -> 1,000."""
    b = _Builder(seed)
    x, c = "input", 3
    for spec in VGG16:
        if spec == "M":
            x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        else:
            x, c = b.op("Relu", [b.conv(x, c, spec, 3, bias=True)]), spec
    x = b.op("Flatten", [x], axis=1)
    x = b.op("Relu", [b.dense(x, c * 7 * 7, 4096)])
    x = b.op("Relu", [b.dense(x, 4096, 4096)])
    return b.model(b.dense(x, 4096, 1000), "vgg16")


def huge_mlp(seed: int) -> onnx.ModelProto:
    """An MLP of 2.15 GB (256 -> 8,192 -> 32,768 -> 8,192 -> 10; two weights of 1.07 GB each, since a
    single protobuf field cannot pass 2 GB): past protobuf's 2 GB limit, for the external-data paths.
    Input ``x``, output ``y``."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, d = [], [], "x", 256
    widths = (8192, 32768, 8192, 10)
    for i, n in enumerate(widths):
        w = rng.standard_normal((n, d), dtype=np.float32)
        w *= np.float32(np.sqrt(2.0 / d))
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(n, np.float32), f"b{i}")]
        del w
        out = "y" if i == len(widths) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [out], transB=1))
        if i < len(widths) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        x, d = out, n
    graph = helper.make_graph(nodes, "huge", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


BUILDERS = {"resnet50": resnet50, "vgg16": vgg16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--external", action="store_true", help="weights as external data")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in BUILDERS.items():
        for tag, seed in (("a", 1), ("b", 2)):
            path = args.out / f"{name}_{tag}.onnx"
            onnx.save(build(seed), str(path), save_as_external_data=args.external,
                      location=f"{path.name}.data" if args.external else None)
            print(path)


if __name__ == "__main__":
    main()
