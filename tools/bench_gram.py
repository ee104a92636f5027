"""Where a layer statistic's X'X is cheaper on the CPU: numpy (BLAS's symmetric rank-k update, the
one the zip uses) or ONNX Runtime (``MatMul(Transpose(X), X)`` as a graph would append it; issue 23,
item 2). Float32 rows as the stages spool them; each side timed alone, best of ``--repeats``,
side by side in one run.

Run: ``python tools/bench_gram.py [--rows 13056] [--widths 768,3072] [--update]`` (``--update``
writes the table into docs/results.md between the bench_gram markers).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from onnx import TensorProto, helper
from results import update_section  # tools/results.py

from onnxzip.calibrate.runtime import session


def gram_model(width: int):
    nodes = [helper.make_node("Transpose", ["x"], ["xt"]), helper.make_node("MatMul", ["xt", "x"], ["h"])]
    graph = helper.make_graph(nodes, "gram", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, [width, width])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def best(f, repeats: int) -> float:
    f()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        f()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=13056)
    parser.add_argument("--widths", default="768,3072")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--update", action="store_true")
    args = parser.parse_args()
    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        x = np.random.default_rng(width).standard_normal((args.rows, width)).astype(np.float32)
        sess = session(gram_model(width), "cpu")
        ort_s = best(lambda: sess.run(None, {"x": x}), args.repeats)
        numpy_s = best(lambda: x.T @ x, args.repeats)
        diff = float(np.abs(sess.run(None, {"x": x})[0] - x.T @ x).max() / np.abs(x.T @ x).max())
        rows.append([f"{args.rows} x {width}", f"{numpy_s:.3f}", f"{ort_s:.3f}", f"{ort_s / numpy_s:.2f}", f"{diff:.1e}"])
        print(rows[-1], flush=True)
    table = ["| rows x width | numpy X'X (s) | ONNX Runtime MatMul (s) | ONNX Runtime / numpy | max rel. diff |",
             "|---|---:|---:|---:|---:|"] + ["| " + " | ".join(r) + " |" for r in rows]
    text = (f"Run: `python tools/bench_gram.py` on {platform.machine()} ({os.cpu_count()} cores), ONNX Runtime CPU, "
            f"{time.strftime('%Y-%m-%d')}; float32 rows, best of {args.repeats}.\n\n" + "\n".join(table) + "\n")
    if args.update:
        update_section("bench_gram", "Statistics in ONNX Runtime or numpy (issue 23, item 2)", text)
    print(text)


if __name__ == "__main__":
    main()
