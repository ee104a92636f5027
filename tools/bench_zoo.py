"""Share-0 equivalence and zip time on the architecture-only zoo models inside the onnx wheel.

Two copies of each model get different random (He-scaled) weights, are zipped with nothing shared,
and must reproduce both originals; with ``--share`` a second pass zips at that share (equivalence
against the per-task zipped networks). Writes a table; ``--update`` puts it into docs/results.md
between the bench_zoo markers. Run from the repository root: ``python tools/bench_zoo.py``.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from results import update_section  # noqa: E402  (tools/results.py)
from test_exporters import FAST_ZOO, SLOW_ZOO, randomized  # noqa: E402  (the tests' model maker)

from onnxzip import zip_models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--models", default=",".join(FAST_ZOO + SLOW_ZOO))
    parser.add_argument("--update", action="store_true")
    args = parser.parse_args()
    lines = [f"| model | parameters (each) | tied groups | restored at | share 0: max abs diff vs originals | "
             f"share 0 zip (s) | share {args.share}: equivalence diff | share {args.share}: params kept | "
             f"share {args.share} zip (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in args.models.split(","):
        a, b = randomized(name, 1), randomized(name, 2)
        shape = [d.dim_value for d in a.graph.input[0].type.tensor_type.shape.dim]
        data = [{a.graph.input[0].name: np.random.default_rng(0).random([2] + shape[1:], dtype=np.float32)}] * 2
        start = time.perf_counter()
        zero = zip_models([a, b], data, share=0.0, quiet=True, names=("a", "b"))
        t0 = time.perf_counter() - start
        start = time.perf_counter()
        part = zip_models([a, b], data, share=args.share, quiet=True, names=("a", "b"))
        t1 = time.perf_counter() - start
        rep = part.report
        tied = sum(1 for g in rep["groups"] if len(g["layers"]) > 1)
        diff = max(t["max_abs_diff"] for t in zero.report["tasks"])
        lines.append(f"| {name} | {zero.report['params_before'] // 2:,} | {tied} | {len(rep['restored_at'])} | "
                     f"{diff:.2g} | {t0:.1f} | {rep['equivalence_max_abs_diff']:.2g} | "
                     f"{rep['params_after'] / rep['params_before']:.1%} | {t1:.1f} |")
        print(lines[-1], flush=True)
    body = (f"Run: `python tools/bench_zoo.py --update` on {platform.machine()}, ONNX Runtime CPU, "
            f"{time.strftime('%Y-%m-%d')}; 2 calibration images (224x224) per task, random weights, so the "
            "figures check exactness and time, not accuracy.\n\n" + "\n".join(lines) + "\n")
    if args.update:
        update_section('bench_zoo', "The onnx wheel's zoo architectures (issue 3)", body)


if __name__ == "__main__":
    main()
