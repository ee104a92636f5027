"""How long zipping takes and how much memory it needs on ImageNet-size pairs; zipped latency.

Default (issue 9): ResNet-50 and VGG-16 pairs with random weights (tools/big_models.py), 256
calibration samples of 3x224x224 per task, ``--share 0.5``. Each measurement runs in a fresh
process (its peak RSS is its own), one after another:

* the floor: ONNX Runtime alone runs both original models over the calibration set (batch 64);
* the zip: ``zip_models`` with the default options (wall time, per-phase seconds, peak RSS, the
  largest group's matching time, parameters kept, fidelity).

Ratios: zip time / floor, peak RSS / the two models' weight bytes. ``--models resnet50`` picks one
pair; ``--update`` writes the table into docs/results.md between the bench_scale markers. Models
and data are cached in ``--cache`` (default ~/.cache/onnxzip/bench), outside the repository.

``--models bertbase:128`` adds the BERT-base-size pair of tools/make_bert_base.py (issue 23), 128
sequences of ``--tokens`` 128 token ids.

``--small``: the older table (bench_speed markers): builds two VGG-style CNNs with random weights in code (3x32x32 input; convs 64-64-pool-128-128-pool-
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
import json
import multiprocessing
import os
import platform
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from results import update_section  # tools/results.py

from onnxzip import zip_models
from onnxzip.calibrate.runtime import session

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


def small(args: argparse.Namespace) -> None:
    """Zip time and zipped latency on the small VGG-style CNN pair (the bench_speed section)."""
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


def _floor(paths: list[str], data: str, batch: int) -> dict:
    """Child process: ORT alone runs both originals over the calibration set."""
    from onnxzip.calibrate.runtime import run, session
    from onnxzip.timing import peak_rss_mb
    x = dict(np.load(data))
    start = time.perf_counter()
    for p in paths:
        run(session(p), x, batch=batch)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def _zip(paths: list[str], data: str, share: float) -> dict:
    """Child process: one zip with the default options."""
    start = time.perf_counter()
    result = zip_models(paths, [data, data], share=share, names=("a", "b"), quiet=True)
    rep = result.report
    groups = [g for g in rep["groups"] if "matching_seconds" in g]
    largest = max(groups, key=lambda g: g["cost_matrix"][0] * g["cost_matrix"][1], default=None)
    return {"seconds": time.perf_counter() - start, "phases": rep["phases"], "peak_rss_mb": rep["peak_rss_mb"],
            "kept": rep["params_after"] / rep["params_before"], "bytes_before": rep["bytes_before"],
            "rel_err": [t["rel_err"] for t in rep["tasks"]],
            "largest": None if largest is None else (largest["cost_matrix"], largest["matching_seconds"]),
            "wide": [r["name"] for r in rep["layers"] if r.get("shared") and r["kind"] == "dense"],
            "rows_read": min(r.get("rows_read", 1.0) for r in rep["layers"])}


def _child(fn, *args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def scale(args: argparse.Namespace) -> None:
    """The ResNet-50 / VGG-16 table (the bench_scale section)."""
    from big_models import BUILDERS  # tools/big_models.py
    cache = Path(os.path.expanduser(args.cache))
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.models.split(","):
        name, _, count = spec.partition(":")
        samples = int(count or args.samples)
        if name == "bertbase":
            paths, data = _bert_base(cache, samples, args.tokens)
        else:
            data = cache / f"calib{samples}.npz"
            if not data.exists():
                np.savez(data, input=np.random.default_rng(0).random((samples, 3, 224, 224), dtype=np.float32))
            paths = []
            for tag, seed in (("a", 1), ("b", 2)):
                p = cache / f"{name}_{tag}.onnx"
                if not p.exists():
                    onnx.save(BUILDERS[name](seed), str(p))
                paths.append(str(p))
        floor = _child(_floor, paths, str(data), 64)
        print(f"{name}: floor {floor['seconds']:.1f} s", flush=True)
        got = _child(_zip, paths, str(data), args.share)
        print(f"{name}: zip {got['seconds']:.1f} s, peak {got['peak_rss_mb']:.0f} MB", json.dumps(got), flush=True)
        rows.append((name, samples, floor, got))
    lines = [f"Run: `python tools/bench_speed.py --update` on {platform.machine()} ({os.cpu_count()} cores), ONNX "
             f"Runtime CPU, {time.strftime('%Y-%m-%d')}; pairs with random weights (tools/big_models.py; "
             f"bertbase: tools/make_bert_base.py, sequences of {args.tokens} tokens), random calibration samples "
             "per task (3x224x224 images, how many: the table), "
             f"`--share {args.share}`, default options "
             "(loss-aware, recovery, merge check). Floor: ONNX Runtime alone runs both originals over the same "
             "samples, in its own process, just before the zip.", "",
             "| pair | samples | weights (both) | floor (s) | zip (s) | zip / floor | peak RSS (MB) | RSS / weights | "
             "params kept | rel. error a / b | largest matching (n x n: s) | statistics rows read (min) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    for name, samples, floor, got in rows:
        mb = got["bytes_before"] / 1e6
        largest = "-" if got["largest"] is None else \
            f"{got['largest'][0][0]} x {got['largest'][0][1]}: {got['largest'][1]:.1f}"
        lines.append(f"| {name} | {samples} | {mb:.0f} MB | {floor['seconds']:.1f} | {got['seconds']:.1f} | "
                     f"{got['seconds'] / floor['seconds']:.1f}x | {got['peak_rss_mb']:.0f} | "
                     f"{got['peak_rss_mb'] / mb:.1f}x | {got['kept']:.1%} | "
                     f"{got['rel_err'][0]:.4f} / {got['rel_err'][1]:.4f} | {largest} | {got['rows_read']:.2f} |")
    lines += ["", "Seconds per phase, each second in one phase (originals, fisher and verify include their own "
              "model runs; forward is the zip's stage runs, original and zipped side by side, their building "
              "and spooling; layer check compares their pre-activations; other is what no phase covers):", "",
              "| pair | " + " | ".join(PHASES) + " | other |", "|---|" + "---:|" * (len(PHASES) + 1)]
    for name, _, _, got in rows:
        other = got["seconds"] - sum(got["phases"].values())
        lines.append(f"| {name} | " + " | ".join(f"{got['phases'].get(p, 0.0):.1f}" for p in PHASES) +
                     f" | {other:.1f} |")
    body = "\n".join(lines) + "\n"
    print(body)
    if args.update:
        update_section("bench_scale", "Scale: ImageNet-size pairs (issue 9)", body)


def _bert_base(cache: Path, sequences: int, tokens: int) -> tuple[list[str], Path]:
    """The BERT-base-size pair of tools/make_bert_base.py (needs torch and transformers, tools only)
    and ``sequences`` sequences of ``tokens`` token ids (seeded), cached."""
    from make_bert_base import export  # tools/make_bert_base.py
    folder = cache / "bertbase"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for tag, seed in (("a", 1), ("b", 2)):
        p = folder / f"bert_base_{tag}.onnx"
        if not p.exists():
            export(seed, p)
        paths.append(str(p))
    data = folder / f"calib{sequences}x{tokens}.npz"
    if not data.exists():
        ids = np.random.default_rng(0).integers(1000, 30000, (sequences, tokens)).astype(np.int64)
        np.savez(data, input_ids=ids, attention_mask=np.ones_like(ids))
    return paths, data


PHASES = ("load", "originals", "fisher", "forward", "statistics", "costs", "matching", "merge", "recovery", "emit",
          "verify", "layer check")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the small VGG-style CNN table instead")
    parser.add_argument("--models", default="resnet50,vgg16",
                        help="pairs, each optionally with its sample count: resnet50:256,vgg16:64,bertbase:128 "
                             "(bertbase: tools/make_bert_base.py's pair, needs torch and transformers)")
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--cache", default="~/.cache/onnxzip/bench")
    parser.add_argument("--samples", type=int, default=256, help="samples per task (bertbase: sequences)")
    parser.add_argument("--tokens", type=int, default=128, help="bertbase: tokens per sequence")
    parser.add_argument("--batch", type=int, default=32, help="--small: batch size for the latency runs")
    parser.add_argument("--repeats", type=int, default=20, help="--small: latency repeats")
    parser.add_argument("--update", action="store_true")
    args = parser.parse_args()
    small(args) if args.small else scale(args)


if __name__ == "__main__":
    main()
