"""Zip real pretrained models that nobody here trained (``tools/fetch_real.py``) and the LayerNorm
detector samples; measure share-0 exactness and quality at several budgets on held-out inputs.

    python tools/fetch_real.py && python tools/bench_real.py [--sets ocr_det ...] [--update]

Per set: the share-0 max abs difference against the originals, then for each setting the parameters
kept and per task a quality figure on held-out inputs (never the calibration ones) against the task's
own original: mask IoU of the text-probability maps (threshold 0.3, DBNet's) for the detectors,
accuracy on rotation labels for the orientation classifiers (with the original's accuracy), the
relative output error for the regressors, accuracy for the LayerNorm detector samples. ``--update``
writes the table into docs/results.md between the bench_real markers.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import real_data  # noqa: E402  (tools/real_data.py)
from fetch_real import SETS, model_path  # noqa: E402
from results import update_section  # noqa: E402

from onnxzip import zip_models  # noqa: E402
from onnxzip.calibrate import runtime  # noqa: E402
from onnxzip.check.verify import zipped_feeds  # noqa: E402
from onnxzip.graph import io  # noqa: E402

SAMPLES = ROOT.parent / "samples"
LN_TASKS = ("zero", "seven", "small")
SETTINGS = {  # set -> zip settings after share 0
    "ocr_det": [{"target_params": 0.9}, {"target_params": 0.75}, {"target_params": 0.75, "distill": 30},
                {"share": 0.5}, {"share": 0.5, "distill": 30}],
    "ocr_cls": [{"target_params": 0.9}, {"target_params": 0.75}, {"share": 0.5}, {"share": 0.5, "distill": 200}],
    "sk_mlp5": [{"target_params": 0.75}, {"share": 0.5}, {"share": 1.0}, {"share": 1.0, "distill": 2000}],
    "sk_mlp6": [{"target_params": 0.75}, {"share": 0.5}, {"share": 1.0}, {"share": 1.0, "distill": 2000}],
    "ln_detectors": [{"target_params": 0.75}, {"target_params": 0.5}, {"target_params": 0.5, "distill": 500},
                     {"share": 1.0}, {"share": 1.0, "distill": 500}],
}
CALIB, HELD_OUT = {"ocr_det": 32, "ocr_cls": 64}, {"ocr_det": 24, "ocr_cls": 128}


def load_set(name: str) -> tuple[list[str], list[str], list[dict], list[dict]]:
    """(models, task names, calibration arrays, held-out arrays with labels where they exist)."""
    if name == "ln_detectors":
        models = [str(SAMPLES / f"ln_{t}.onnx") for t in LN_TASKS]
        calib = [io.load_arrays(SAMPLES / f"calib_ln_{t}.npz") for t in LN_TASKS]
        test = [io.load_arrays(SAMPLES / f"test_ln_{t}.npz") for t in LN_TASKS]
        return models, list(LN_TASKS), calib, test
    tasks = list(SETS[name])
    models = [str(model_path(name, t)) for t in tasks]
    calib, test = [], []
    for i, t in enumerate(tasks):
        c = real_data.set_inputs(name, t, CALIB.get(name, 256), seed=10 + i)
        c.pop("label", None)
        calib.append(c)
        test.append(real_data.set_inputs(name, t, HELD_OUT.get(name, 512), seed=100 + i))
    return models, tasks, calib, test


def outputs(model, feeds: dict[str, np.ndarray], names: list[str] | None) -> dict[str, np.ndarray]:
    """Outputs of ``model``; inputs not in ``feeds`` (other tasks' inputs of a zipped model) get zeros."""
    sess = runtime.session(model)
    return runtime.run(sess, zipped_feeds(sess, feeds), names, 16)


def quality(name: str, zipped, models: list[str], tasks: list[str], test: list[dict]) -> list[str]:
    """Per task, the held-out figure of the zipped model against its original (see the docstring)."""
    cells = []
    for model, task, data in zip(models, tasks, test):
        labels = data.get("label")
        feeds = {k: v for k, v in data.items() if k != "label"}
        out = outputs(model, feeds, None)
        key = next(iter(out))
        ref = np.asarray(out[key], np.float64)
        zipped_feeds = {(k if k in {i.name for i in zipped.graph.input} else f"{task}/{k}"): v for k, v in feeds.items()}
        got = np.asarray(outputs(zipped, zipped_feeds, [f"{task}/{key}"])[f"{task}/{key}"], np.float64)
        if name == "ocr_det":
            a, b = got > 0.3, ref > 0.3
            union = np.count_nonzero(a | b)
            cells.append(f"IoU {np.count_nonzero(a & b) / union if union else 1.0:.3f}")
        elif labels is not None and ref.ndim == 2 and ref.shape[1] > 1:
            cells.append(f"{np.mean(got.argmax(1) == labels):.3f} ({np.mean(ref.argmax(1) == labels):.3f})")
        elif labels is not None:
            acc = lambda p: np.mean((p.reshape(len(p), -1)[:, 0] > 0.5) == labels)  # noqa: E731
            cells.append(f"{acc(got):.4f} ({acc(ref):.4f})")
        else:
            cells.append(f"rel err {np.linalg.norm(got - ref) / np.linalg.norm(ref):.3g}")
    return cells


def run_set(name: str) -> list[str]:
    models, tasks, calib, test = load_set(name)
    rows = []
    for setting in [{"share": 0.0}] + SETTINGS[name]:
        start = time.perf_counter()
        result = zip_models(models, calib, names=tasks, quiet=True, **setting)
        seconds = time.perf_counter() - start
        rep = result.report
        label = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in setting.items())
        if setting == {"share": 0.0}:
            figures = [f"max abs diff {max(t['max_abs_diff'] for t in rep['tasks']):.2g}"] * len(tasks)
        else:
            figures = quality(name, result.model, models, tasks, test)
        budget = rep.get("budget") or {}
        backed = " (backed off)" if budget.get("backoff") else ""
        backed += f" ({budget['chosen']} kept)" if budget.get("chosen", "allocation") != "allocation" else ""
        verdicts = ",".join(t.get("verdict", "-") for t in rep["tasks"])
        tuned = (result.summary.phases or {}).get("distill")
        rows.append(f"| {name} | {label}{backed} | {rep['params_after'] / rep['params_before']:.1%} | "
                    + " / ".join(figures) + f" | {verdicts} | {seconds:.0f}"
                    + ("" if tuned is None else f" ({tuned:.0f} distilling)") + " |")
        print(rows[-1], flush=True)
    return rows


def previous_rows() -> list[str]:
    """The table rows already in docs/results.md (sets not run again keep theirs)."""
    from results import RESULTS
    text = RESULTS.read_text() if RESULTS.exists() else ""
    block = text.split("<!-- bench_real:start -->")[-1].split("<!-- bench_real:end -->")[0] if "bench_real:start" in text else ""
    return [line for line in block.splitlines() if line.startswith("| ") and line.split("|")[1].strip() in SETTINGS]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--update", action="store_true")
    args = parser.parse_args()
    missing = [s for s in args.sets if s in SETS and not all(model_path(s, t).is_file() for t in SETS[s])]
    if missing:
        print(f"models missing for {', '.join(missing)}: run python tools/fetch_real.py", file=sys.stderr)
        return 2
    start = time.perf_counter()
    lines = ["| set | setting | params kept | held-out quality per task (vs. its original) | verdicts (held-out "
             "calibration samples) | zip (s) |", "|---|---|---:|---|---|---:|"]
    for s in args.sets:
        lines += run_set(s)
    kept = [row for row in previous_rows() if row.split("|")[1].strip() not in args.sets]
    rows = sorted(kept + lines[2:], key=lambda r: list(SETTINGS).index(r.split("|")[1].strip()))
    body = (f"Run: `python tools/bench_real.py --update` on {platform.machine()}, ONNX Runtime CPU, "
            f"{time.strftime('%Y-%m-%d')} ({', '.join(args.sets)}: {time.perf_counter() - start:.0f} s). No labels "
            "and no retraining in the zips.\n\n" + "\n".join(lines[:2] + rows) + "\n")
    if args.update:
        update_section("bench_real", "Real pretrained models (issue 7)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
