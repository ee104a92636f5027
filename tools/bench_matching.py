"""How long the k-pair matching takes at transformer and ImageNet widths (issue 23, item 6).

For each width and cost kind, side by side in one run: the dense rectangular assignment
(``match_dense``: scipy's ``linear_sum_assignment`` with ``-big`` dummies) and the sparse linear
program with its dual proof (``match_certified``), their seconds and totals (the sparse total
relative to the dense one: 0 where both are optimal).

Cost kinds (seeded): ``hessian``, MTZ pair costs of random neurons under a random positive definite
Hessian (``pair_costs``); ``loss``, the same with each side's share weighted by a per-neuron loss
weight spread over three orders of magnitude (how the loss-aware default costs pairs). ``--costs
F.npy ...`` adds saved cost matrices (for instance one captured from a zip), paired at half.

Run: ``python tools/bench_matching.py [--widths 1536,3072] [--update]`` (``--update`` writes the
table into docs/results.md between the bench_matching markers).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from results import update_section  # tools/results.py

from onnxzip.sharing.assign import match_certified, match_dense
from onnxzip.sharing.merge import pair_costs


def costs(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = n // 4 + 1
    x = rng.standard_normal((2 * d, d))
    s = x.T @ x / (2 * d) + 1e-3 * np.eye(d)
    c = pair_costs(rng.standard_normal((n, d)), rng.standard_normal((n, d)), s, 1.3 * s)
    if kind == "loss":
        c = c * (10 ** rng.uniform(-3, 0, n))[:, None] + c * (10 ** rng.uniform(-3, 0, n))[None, :]
    return c


def measure(name: str, c: np.ndarray, k: int) -> list:
    started = time.perf_counter()
    ia, ib = match_dense(c, k)
    dense_s = time.perf_counter() - started
    started = time.perf_counter()
    pairs = match_certified(c, k, seconds=600.0)
    sparse_s = time.perf_counter() - started
    best = float(c[ia, ib].sum())
    excess = "-" if pairs is None else f"{float(c[pairs.ia, pairs.ib].sum()) / best - 1:.1e}"
    how = "not proved" if pairs is None else pairs.method
    row = [name, f"{c.shape[0]} x {c.shape[1]}", k, f"{dense_s:.1f}", f"{sparse_s:.1f}",
           f"{dense_s / sparse_s:.1f}x", excess, how]
    print(" | ".join(str(x) for x in row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="1536,3072")
    parser.add_argument("--kinds", default="hessian,loss")
    parser.add_argument("--costs", nargs="*", default=[], help="saved (n, m) cost matrices (.npy)")
    parser.add_argument("--update", action="store_true")
    args = parser.parse_args()
    rows = []
    for n in (int(w) for w in args.widths.split(",")):
        for kind in args.kinds.split(","):
            rows.append(measure(kind, costs(kind, n), n // 2))
    for path in args.costs:
        c = np.load(path)
        rows.append(measure(Path(path).stem, c, min(c.shape) // 2))
    table = ["| costs | matrix | pairs | dense (s) | sparse (s) | speed-up | sparse total / dense - 1 | proved |",
             "|---|---|---:|---:|---:|---:|---:|---|"] + ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    text = (f"Run: `python tools/bench_matching.py` on {platform.machine()} ({os.cpu_count()} cores), "
            f"{time.strftime('%Y-%m-%d')}; half of each side paired, dense and sparse side by side.\n\n"
            + "\n".join(table) + "\n")
    if args.update:
        update_section("bench_matching", "Matching at transformer widths (issue 23)", text)
    print(text)


if __name__ == "__main__":
    main()
