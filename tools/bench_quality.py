"""Accuracy of zipped sample models against baselines, per sharing level.

Methods (each task's test accuracy on the 597 held-out images; every method runs through the full
pipeline, so each figure is the accuracy of a real zipped ONNX model):

* ``naive``     -- neuron i of A with neuron i of B, weights averaged;
* ``euclid``    -- Euclidean weight matching (optimal assignment) + averaging (Git Re-Basin style);
* ``zipit``     -- activation-correlation matching + averaging (ZipIt!-style, without its within-model
  merging): both models run both tasks' calibration images, neurons paired by output correlation;
* ``mtz-paper`` -- the paper's procedure without its retraining: greedy matching, per-channel conv
  Hessian, a shared neuron's weights on private inputs kept, the original weights as targets;
* ``input-cov`` -- onnxzip with input-covariance Hessians only: optimal matching, exact patch Hessian
  where small, private-input weights re-solved; no loss weights, no recovery;
* ``onnxzip``   -- the default with an automatic budget: loss-aware costs (label-free Fisher through
  ONNX Runtime), per-group counts from ``--target-params`` set to the ``input-cov`` row's parameters
  kept, and label-free recovery (targets refit to the original pre-activations);
* ``+retrain``  -- ``onnxzip`` then 200 Adam steps on the labelled training split (``--finetune``);
* ``+distill``  -- ``onnxzip`` with ``--distill 2000``: no labels, each task tuned to reproduce its
  original on the calibration images (every try of the budget distilled before it is judged).

The first four share the same fraction of every layer group's neurons ("share"); the last two keep
the same number of parameters as ``input-cov`` at that share, placed where the predicted loss is
lowest. "hidden shared" is the share of one model's hidden-layer parameters stored once.

Writes a Markdown table and a plot (docs/quality.png) of accuracy against parameters kept;
``--update`` puts the table into docs/results.md. Needs matplotlib for the plot.
Run from the repository root: ``python tools/bench_quality.py --update``; the vision transformers
have their own section and plot (docs/quality_vit.png): ``python tools/bench_quality.py --archs vit --update``.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from results import update_section  # tools/results.py

from onnxzip import ZipOptions, accuracy_of, zip_models
from onnxzip.graph.io import load_arrays

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
TASKS = ("digit", "parity")
#: pairs on other tasks: the fine-tunes of one checkpoint (samples/ft_*.onnx, tools/make_samples.py)
PAIR_TASKS = {"ft": ("parity", "mod3")}


def tasks_of(arch: str) -> tuple[str, str]:
    return PAIR_TASKS.get(arch, TASKS)
UNIFORM = {
    "naive": dict(matching="index", hessian="identity", recover=False, loss_aware=False),
    "euclid": dict(matching="optimal", hessian="identity", recover=False, loss_aware=False),
    "zipit": dict(cost="correlation", hessian="identity", recover=False, loss_aware=False),
    "mtz-paper": dict(matching="greedy", hessian="channel", compensate=False, recover=False, loss_aware=False),
    "input-cov": dict(recover=False, loss_aware=False),
}  # each run as ZipOptions(share=..., **options)
METHODS = list(UNIFORM) + ["onnxzip", "+retrain", "+distill"]
SHARES = (0.25, 0.5, 0.75, 0.9, 1.0)
DEFAULT_ARCHS = "mlp,cnn,resnet"


def hidden_params(result) -> int:
    """Parameters of one task's hidden (zipped) layers: weights and biases."""
    z = result.plan.layers
    return sum(z[i].weights[0].size for i in result.plan.hidden if not z[i].follower)


def measure(arch: str, shares, steps: int, distill: int) -> list[dict]:
    tasks = tasks_of(arch)
    tests = {t: load_arrays(SAMPLES / f"test_{t}.npz") for t in tasks}
    models = [SAMPLES / f"{arch}_{t}.onnx" for t in tasks]
    calib = [SAMPLES / f"calib_{t}.npz" for t in tasks]
    train = [SAMPLES / f"train_{t}.npz" for t in tasks]

    def row(method, share, r, seconds):
        acc = {t: accuracy_of(r.model, {"image": tests[t]["image"]}, tests[t]["label"], f"{t}/logits") for t in tasks}
        rep = r.report
        saved = rep["params_before"] - rep["params_after"]
        out = {"arch": arch, "method": method, "share": share, "seconds": seconds, **acc,
               "params_kept": rep["params_after"] / rep["params_before"], "hidden_shared": saved / hidden_params(r)}
        print(f"  {arch} {method:<10} share {share:.2f}: kept {out['params_kept']:.3f} "
              + " ".join(f"{t} {acc[t]:.4f}" for t in tasks), flush=True)
        return out

    rows = [{"arch": arch, "method": "original", "share": None, "params_kept": 1.0, "hidden_shared": 0.0,
             **{t: accuracy_of(m, {"image": tests[t]["image"]}, tests[t]["label"], "logits")
                for t, m in zip(tasks, models)}}]
    for share in shares:
        kept = None
        for method, opts in UNIFORM.items():
            start = time.perf_counter()
            r = zip_models(models, calib, ZipOptions(share=share, names=tasks, quiet=True, **opts))
            rows.append(row(method, share, r, time.perf_counter() - start))
            kept = rows[-1]["params_kept"]
        for method, data, extra in (("onnxzip", calib, {}), ("+retrain", train, dict(labels="label", finetune=steps)),
                                    ("+distill", calib, dict(distill=distill))):
            start = time.perf_counter()
            r = zip_models(models, data, ZipOptions(names=tasks, quiet=True, target_params=kept, **extra))
            rows.append(row(method, share, r, time.perf_counter() - start))
    return rows


def table(rows: list[dict]) -> str:
    out = []
    for arch in dict.fromkeys(r["arch"] for r in rows):
        orig = next(r for r in rows if r["arch"] == arch and r["method"] == "original")
        tasks = tasks_of(arch)
        out += [f"**{arch.upper()}** (originals: " + ", ".join(f"{t} {orig[t]:.4f}" for t in tasks) + "); "
                f"test accuracy {' / '.join(tasks)}; params kept and hidden shared for input-cov / onnxzip", "",
                "| share | params kept | hidden shared | " + " | ".join(METHODS) + " |",
                "|---:|---:|---:|" + "---|" * len(METHODS)]
        for share in dict.fromkeys(r["share"] for r in rows if r["share"] is not None):
            cells = {r["method"]: r for r in rows if r["arch"] == arch and r["share"] == share}
            best = {t: max(c[t] for c in cells.values()) for t in tasks}
            line = [f"{share:.2f}", f"{cells['input-cov']['params_kept']:.1%} / {cells['onnxzip']['params_kept']:.1%}",
                    f"{cells['input-cov']['hidden_shared']:.0%} / {cells['onnxzip']['hidden_shared']:.0%}"]
            for m in METHODS:
                line.append(" / ".join(f"**{cells[m][t]:.4f}**" if cells[m][t] == best[t] else f"{cells[m][t]:.4f}"
                                       for t in tasks))
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return False
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    fig, axes = plt.subplots(2, len(archs), figsize=(4 * len(archs), 3.2 * 2), squeeze=False)  # (two tasks a pair)
    for j, arch in enumerate(archs):
        orig = next(r for r in rows if r["arch"] == arch and r["method"] == "original")
        for i, task in enumerate(tasks_of(arch)):
            ax = axes[i][j]
            for m in METHODS:
                pts = sorted((r["params_kept"], r[task]) for r in rows if r["arch"] == arch and r["method"] == m)
                ax.plot([p for p, _ in pts], [a for _, a in pts], marker="o", label=m)
            ax.axhline(orig[task], color="black", linestyle=":", label="original")
            ax.set_title(f"{arch} / {task}")
            ax.set_xlabel("parameters kept")
            ax.set_ylabel("test accuracy")
            ax.set_ylim(max(0.0, orig[task] - 0.25), min(1.0, orig[task] + 0.03))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=DEFAULT_ARCHS)
    parser.add_argument("--steps", type=int, default=200, help="retraining steps for +retrain")
    parser.add_argument("--distill", type=int, default=2000, help="distillation steps for +distill")
    parser.add_argument("--shares", default=",".join(map(str, SHARES)), help="sharing levels (default: all)")
    parser.add_argument("--update", action="store_true", help="write the table into docs/results.md")
    args = parser.parse_args()
    start = time.perf_counter()
    shares = tuple(float(s) for s in args.shares.split(","))
    rows = [r for arch in args.archs.split(",") for r in measure(arch, shares, args.steps, args.distill)]
    body = table(rows)
    default = args.archs == DEFAULT_ARCHS
    suffix = ("" if default else "_" + "_".join(args.archs.split(","))) + \
        ("" if shares == SHARES else "_share_" + "_".join(map(str, shares)))
    plotted = plot(rows, ROOT / "docs" / f"quality{suffix}.png")
    command = "python tools/bench_quality.py" + ("" if default else f" --archs {args.archs}") + \
        ("" if shares == SHARES else f" --shares {args.shares}") + " --update"
    header = (f"Run: `{command}` on {platform.machine()}, ONNX Runtime CPU, "
              f"{time.strftime('%Y-%m-%d')}; {time.perf_counter() - start:.0f} s for {len(rows)} rows. "
              "Bold: best at that share."
              + (f" Plot: ![accuracy vs parameters kept](quality{suffix}.png)" if plotted else "") + "\n\n")
    print(body)
    if args.update:
        title = "Zipping quality on the sample pairs" + ("" if default else f" ({args.archs})") + \
            ("" if shares == SHARES else f" at share {args.shares}")
        update_section(f"bench_quality{suffix}", title, header + body)


if __name__ == "__main__":
    main()
