"""Accuracy of zipped sample models against baselines, per sharing level.

Methods (all share the same neurons per layer; they differ in how neurons are paired and merged):

* ``naive``     -- neuron i of A with neuron i of B, weights averaged (``--matching index --hessian identity``);
* ``euclid``    -- Euclidean weight matching (optimal assignment) + averaging (``--hessian identity``);
* ``mtz-paper`` -- the paper's procedure without its retraining: greedy matching, per-channel Hessian,
  a shared neuron's weights on private inputs kept, targets = the original weights;
* ``no-recover``-- the default without recovery: optimal matching, exact patch Hessian where small,
  private-input weights re-solved, targets = the original weights;
* ``recover``   -- as ``no-recover``, with every layer's targets (and the heads) refit to reproduce
  the original network's pre-activations on the calibration data (no labels);
* ``onnxzip``   -- the default: ``recover`` with loss-aware costs (each neuron's cost weighted by its
  label-free Fisher statistic, gradients through ONNX Runtime).

Every method runs through the full pipeline (merge, emit, ORT), so each figure is the accuracy of a
real zipped ONNX model on the held-out test images. Writes a Markdown table to stdout and, with
``--update``, into docs/results.md between the bench_quality markers.

Run from the repository root: ``python tools/bench_quality.py --update``.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from onnxzip import ZipOptions, accuracy_of, zip_models
from onnxzip.io import load_arrays
from results import update_section  # tools/results.py

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
TASKS = ("digit", "parity")
METHODS = {
    "naive": dict(matching="index", hessian="identity", recover=False, loss_aware=False),
    "euclid": dict(matching="optimal", hessian="identity", recover=False, loss_aware=False),
    "mtz-paper": dict(matching="greedy", hessian="channel", compensate=False, recover=False, loss_aware=False),
    "no-recover": dict(recover=False, loss_aware=False),
    "recover": dict(loss_aware=False),
    "onnxzip": dict(),
}
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def measure(arch: str, shares, methods) -> list[dict]:
    tests = {t: load_arrays(SAMPLES / f"test_{t}.npz") for t in TASKS}
    models = [SAMPLES / f"{arch}_{t}.onnx" for t in TASKS]
    calib = [SAMPLES / f"calib_{t}.npz" for t in TASKS]
    rows = [{"arch": arch, "method": "original", "share": None, "params_kept": 1.0, "seconds": 0.0,
             **{t: accuracy_of(m, {"image": tests[t]["image"]}, tests[t]["label"], "logits")
                for t, m in zip(TASKS, models)}}]
    for share in shares:
        for method in methods:
            start = time.perf_counter()
            r = zip_models(models, calib, ZipOptions(share=share, names=TASKS, quiet=True, **METHODS[method]))
            seconds = time.perf_counter() - start
            acc = {t: accuracy_of(r.model, {"image": tests[t]["image"]}, tests[t]["label"], f"{t}/logits")
                   for t in TASKS}
            rows.append({"arch": arch, "method": method, "share": share, "seconds": seconds,
                         "params_kept": r.report["params_after"] / r.report["params_before"], **acc})
            print(f"  {arch} {method:<10} share {share:.2f}: " + " ".join(f"{t} {acc[t]:.4f}" for t in TASKS),
                  flush=True)
    return rows


def table(rows: list[dict], methods) -> str:
    out = []
    for arch in dict.fromkeys(r["arch"] for r in rows):
        orig = next(r for r in rows if r["arch"] == arch and r["method"] == "original")
        out.append(f"**{arch.upper()}** (originals: digit {orig['digit']:.4f}, parity {orig['parity']:.4f}); "
                   "test accuracy digit / parity, parameters kept")
        out.append("")
        out.append("| share | params kept | " + " | ".join(methods) + " |")
        out.append("|---:|---:|" + "---|" * len(methods))
        for share in dict.fromkeys(r["share"] for r in rows if r["share"] is not None):
            cells = {r["method"]: r for r in rows if r["arch"] == arch and r["share"] == share}
            kept = cells[methods[0]]["params_kept"]
            line = [f"{share:.2f}", f"{kept:.1%}"]
            best = {t: max(cells[m][t] for m in methods) for t in TASKS}
            for m in methods:
                c = cells[m]
                line.append(" / ".join(f"**{c[t]:.4f}**" if c[t] == best[t] and share > 0 else f"{c[t]:.4f}"
                                       for t in TASKS))
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="mlp,cnn,resnet")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--update", action="store_true", help="write the table into docs/results.md")
    args = parser.parse_args()
    methods = args.methods.split(",")
    start = time.perf_counter()
    rows = [r for arch in args.archs.split(",") for r in measure(arch, SHARES, methods)]
    body = table(rows, methods)
    total = time.perf_counter() - start
    header = (f"Run: `python tools/bench_quality.py --update` on {platform.machine()} "
              f"({platform.processor() or 'cpu'}, ONNX Runtime CPU), {time.strftime('%Y-%m-%d')}; "
              f"{total:.0f} s for all {len(rows)} rows. Bold: best at that share.\n\n")
    print(body)
    if args.update:
        update_section('bench_quality', 'Zipping quality on the sample pairs (issues 2 and 3)', header + body)


if __name__ == "__main__":
    main()
