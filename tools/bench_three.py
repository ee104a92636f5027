"""Three tasks in one model: the sample CNNs for digit, parity and mod3, zipped together.

For each sharing level, the test accuracy of every task with the default task order (``auto``:
every starting pair is tried per group, the cheapest total cost kept) and with each fixed order
(``--task-order given``, models passed in that order), next to the two-task zips of the same models.

Run from the repository root: ``python tools/bench_three.py [--update]`` (``--update`` writes the
table into docs/results.md between the bench_three markers).
"""
from __future__ import annotations

import argparse
import itertools
import platform
import time
from pathlib import Path

from results import update_section  # tools/results.py

from onnxzip import ZipOptions, accuracy_of, zip_models
from onnxzip.graph.io import load_arrays

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
TASKS = ("digit", "parity", "mod3")


def evaluate(tasks: tuple[str, ...], share: float, order: str, tests: dict) -> tuple[dict, float]:
    models = [SAMPLES / f"cnn_{t}.onnx" for t in tasks]
    calib = [SAMPLES / f"calib_{t}.npz" for t in tasks]
    r = zip_models(models, calib, ZipOptions(share=share, names=tasks, quiet=True, task_order=order))
    acc = {t: accuracy_of(r.model, {"image": tests[t]["image"]}, tests[t]["label"], f"{t}/logits") for t in tasks}
    return acc, r.report["params_after"] / r.report["params_before"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    tests = {t: load_arrays(SAMPLES / f"test_{t}.npz") for t in TASKS}
    original = {t: accuracy_of(SAMPLES / f"cnn_{t}.onnx", {"image": tests[t]["image"]}, tests[t]["label"], "logits")
                for t in TASKS}
    lines = ["| share | zip | params kept | digit | parity | mod3 |", "|---:|---|---:|---:|---:|---:|",
             "| - | originals | 100% | " + " | ".join(f"{original[t]:.4f}" for t in TASKS) + " |"]
    for share in (0.25, 0.5, 0.75):
        runs = [("3 tasks, auto order", TASKS, "auto")]
        runs += [(f"3 tasks, order {'-'.join(p)}", p, "given") for p in itertools.permutations(TASKS)
                 if p[0] < p[1]]  # the starting pair decides; the last task joins the shared set
        runs += [(f"2 tasks {a}+{b}", (a, b), "auto") for a, b in itertools.combinations(TASKS, 2)]
        for label, tasks, order in runs:
            acc, kept = evaluate(tasks, share, order, tests)
            cells = [f"{acc[t]:.4f}" if t in acc else "" for t in TASKS]
            lines.append(f"| {share:.2f} | {label} | {kept:.1%} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    body = (f"Run: `python tools/bench_three.py --update` on {platform.machine()}, ONNX Runtime CPU, "
            f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - start:.0f} s. Sample CNNs, test accuracy "
            "(597 images), no retraining.\n\n" + "\n".join(lines) + "\n")
    if args.update:
        update_section('bench_three', 'Three tasks in one model (issue 3)', body)


if __name__ == "__main__":
    main()
