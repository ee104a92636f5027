"""How long zipping takes, and how fast the zipped model runs, on a VGG-style CNN.

Builds two VGG-style CNNs with random weights in code (3x32x32 input; convs 64-64-pool-128-128-pool-
256-256-pool; dense 4096-512-512-10: about 5.7 M parameters each), zips them at several sharing levels
with 256 calibration samples per task, and measures side by side in one run:

* the wall time of ``zip_models`` (load, normalize, align, statistics, merge, emit, verify);
* ONNX Runtime CPU latency of one batch through the zipped model (both tasks' outputs, one shared
  input) against the sum of the two original models' latencies, as a ratio (each session timed
  alone, so that no idle session's spinning threads compete).

Run from the repository root: ``python tools/bench_speed.py [--update]`` (``--update`` writes the
table into docs/results.md between the bench_speed markers).
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxzip import zip_models
from onnxzip.runtime import session
from results import update_section  # tools/results.py

ROOT = Path(__file__).resolve().parent.parent
CONVS = (64, 64, "pool", 128, 128, "pool", 256, 256, "pool")
DENSE = (512, 512, 10)


def vgg(seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x, c = [], [], "x", 3
    for i, spec in enumerate(CONVS):
        if spec == "pool":
            nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"p{i}"
            continue
        inits += [numpy_helper.from_array(rng.normal(0, np.sqrt(2 / (9 * c)), (spec, c, 3, 3)).astype(np.float32),
                                          f"w{i}"),
                  numpy_helper.from_array(rng.normal(0, 0.01, spec).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x, c = f"r{i}", spec
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    x, d = "flat", c * 4 * 4
    for j, n in enumerate(DENSE):
        inits += [numpy_helper.from_array(rng.normal(0, np.sqrt(2 / d), (n, d)).astype(np.float32), f"fw{j}"),
                  numpy_helper.from_array(np.zeros(n, np.float32), f"fb{j}")]
        nodes.append(helper.make_node("Gemm", [x, f"fw{j}", f"fb{j}"], [f"f{j}"], transB=1))
        x, d = f"f{j}", n
        if j < len(DENSE) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"fr{j}"]))
            x = f"fr{j}"
    graph = helper.make_graph(nodes, "vgg", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def latency(sess, feeds, repeats: int) -> float:
    """Median seconds of one run of ``sess`` on ``feeds`` (after a warm-up run)."""
    sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32, help="batch size for the latency runs")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--update", action="store_true")
    args = parser.parse_args()
    models = [vgg(1), vgg(2)]
    rng = np.random.default_rng(0)
    data = [{"x": rng.random((args.samples, 3, 32, 32), dtype=np.float32)} for _ in models]
    feeds = {"x": rng.random((args.batch, 3, 32, 32), dtype=np.float32)}
    rows = []
    for share in (0.0, 0.5, 1.0):
        start = time.perf_counter()
        result = zip_models(models, data, share=share, names=("a", "b"), quiet=True)
        seconds = time.perf_counter() - start
        # one session alive at a time: idle ORT sessions' spinning threads would slow the others
        t_orig = sum(latency(session(m), feeds, args.repeats) for m in models)
        t_zip = latency(session(result.model), feeds, args.repeats)
        rep = result.report
        rows.append((share, seconds, rep["params_after"] / rep["params_before"], rep["bytes_after"], t_zip / t_orig,
                     t_zip, t_orig))
        print(f"share {share:.2f}: zip {seconds:.1f} s, params kept {rows[-1][2]:.1%}, latency ratio "
              f"{t_zip / t_orig:.2f}", flush=True)
    params = rep["params_before"] // 2
    lines = [f"Run: `python tools/bench_speed.py --update` on {platform.machine()}, ONNX Runtime CPU, "
             f"{time.strftime('%Y-%m-%d')}; two VGG-style CNNs of {params:,} parameters each (random weights), "
             f"{args.samples} calibration samples per task, latency = median of {args.repeats} runs of a "
             f"batch of {args.batch}, zipped model vs. the sum of the two originals (each timed alone).", "",
             "| share | zip time (s) | params kept | weights after (MB) | latency zipped / originals | "
             "zipped (ms) | originals (ms) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for share, seconds, kept, nbytes, ratio, tz, to in rows:
        lines.append(f"| {share:.2f} | {seconds:.1f} | {kept:.1%} | {nbytes / 1e6:.1f} | {ratio:.2f} | "
                     f"{tz * 1e3:.1f} | {to * 1e3:.1f} |")
    body = "\n".join(lines) + "\n"
    print(body)
    if args.update:
        update_section('bench_speed', 'Speed on a VGG-style CNN', body)


if __name__ == "__main__":
    main()
