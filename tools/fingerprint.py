"""Fingerprint what onnxzip produces, to show a refactoring leaves behaviour unchanged.

Zips the sample pairs under a matrix of options (every matcher, Hessian estimator, cost, recovery on
and off, both forms, budgets, three tasks, every transformer sample) and writes, per case, the
SHA-256 of the emitted model's bytes, the report without its timings, and the SHA-256 of that
report's JSON as written (key order included). Run it before and after a
change and compare:

    python tools/fingerprint.py -o before.json          # on the old commit
    python tools/fingerprint.py -o after.json --compare before.json
    python tools/fingerprint.py -o real.json --cases mlp-0 --real   # with the real models of fetch_real.py

Identical hashes mean identical models, byte for byte; a report number that differs is listed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from onnxzip import zip_models

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
PAIR = ("digit", "parity")
#: report keys that are measured time or memory, or name this machine's paths
VOLATILE = {"seconds", "phases", "peak_rss_mb", "matching_seconds", "inputs"}


def _case(arch: str, tasks=PAIR, calib: str = "calib_{}.npz", **options) -> tuple:
    return [f"{arch}_{t}.onnx" for t in tasks], [calib.format(t) for t in tasks], tasks, options


CASES = {
    "mlp-0": _case("mlp", share=0.0),
    "mlp-0.5": _case("mlp", share=0.5),
    "mlp-1": _case("mlp", share=1.0),
    "mlp-list": _case("mlp", share=(0.25, 0.75)),
    "mlp-greedy-channel-norecover": _case("mlp", share=0.5, matching="greedy", recover=False),
    "mlp-identity-index": _case("mlp", share=0.5, hessian="identity", matching="index"),
    "mlp-nocompensate-noloss": _case("mlp", share=0.75, compensate=False, loss_aware=False),
    "mlp-correlation": _case("mlp", share=0.5, cost="correlation"),
    "mlp-labels": _case("mlp", share=0.5, labels="label", calib="test_{}.npz"),
    "mlp-finetune": _case("mlp", share=1.0, labels="label", calib="train_{}.npz", finetune=20),
    "mlp-target": _case("mlp", target_params=0.7),
    "mlp-maxloss": _case("mlp", max_loss_increase=0.05),
    "cnn-0": _case("cnn", share=0.0),
    "cnn-0.5": _case("cnn", share=0.5),
    "cnn-0.5-speed": _case("cnn", share=0.5, favor="speed"),
    "cnn-1": _case("cnn", share=1.0),
    "cnn-channel": _case("cnn", share=0.5, hessian="channel"),
    "cnn-exact-norecover": _case("cnn", share=0.75, hessian="exact", recover=False),
    "cnn-target": _case("cnn", target_params=0.6),
    "cnn-three": _case("cnn", tasks=("digit", "parity", "mod3"), share=0.5),
    "cnn-three-given": _case("cnn", tasks=("digit", "parity", "mod3"), share=0.5, task_order="given"),
    "resnet-0.5": _case("resnet", share=0.5),
    "resnet-0.5-speed": _case("resnet", share=0.5, favor="speed"),
    "resnet-1": _case("resnet", share=1.0),
    "resnet-separate": _case("resnet", share=0.5, separate_inputs=True),
    "sklearn-0.5": _case("sklearn", calib="calib_flat_{}.npz", share=0.5),
    "ln-target": _case("ln", tasks=("zero", "seven", "small"), calib="calib_ln_{}.npz", target_params=0.5),
    "vit-0.5": _case("vit", share=0.5),
    "vit-1": _case("vit", share=1.0),
    "vit-legacy-0.5": _case("vit", tasks=("digit_legacy", "parity_legacy"), calib="calib_digit.npz", share=0.5),
    "bert-0.5": _case("bert", tasks=("a", "b"), calib="calib_bert.npz", share=0.5),
    "gpt2-0.5": _case("gpt2", tasks=("a", "b"), calib="calib_gpt2.npz", share=0.5),
    "hfvit-0.5": _case("hfvit", tasks=("a", "b"), calib="calib_hfvit.npz", share=0.5),
}
#: real models of tools/fetch_real.py (``--real``; their inputs from tools/real_data.py, as bench_real's)
REAL = {
    "real-sk_mlp5-0.5": ("sk_mlp5", {"share": 0.5}),
    "real-sk_mlp6-target": ("sk_mlp6", {"target_params": 0.75}),
    "real-ocr_cls-0.5": ("ocr_cls", {"share": 0.5}),
    "real-ocr_cls-target": ("ocr_cls", {"target_params": 0.9}),
    "real-ocr_det-0.5": ("ocr_det", {"share": 0.5}),
    "real-ocr_det-target": ("ocr_det", {"target_params": 0.9}),
}


def _plain(value):
    """The report as plain JSON, its timings left out."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _real(name: str) -> tuple[list[str], list[dict], tuple[str, ...], dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_real import load_set  # tools/bench_real.py: the same calibration arrays
    models, tasks, calib, _ = load_set(REAL[name][0])
    return models, calib, tuple(tasks), REAL[name][1]


def run(name: str) -> dict:
    if name in REAL:
        models, calib, tasks, options = _real(name)
    else:
        models, calib, tasks, options = CASES[name]
        models, calib = [SAMPLES / m for m in models], [SAMPLES / c for c in calib]
    result = zip_models(models, calib, names=tasks, quiet=True, **options)
    report = _plain(result.report)
    return {"model_sha256": hashlib.sha256(result.model.SerializeToString()).hexdigest(),
            "report_keys_sha256": hashlib.sha256(json.dumps(report, default=str).encode()).hexdigest(),
            "report": report}


def differences(a, b, path: str = "") -> list[str]:
    """Where two plain JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only in one" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--real", action="store_true", help="also the real models' cases (tools/fetch_real.py)")
    parser.add_argument("--compare", help="an earlier output to compare with")
    args = parser.parse_args()
    out = {}
    for name in args.cases.split(",") + (list(REAL) if args.real else []):
        started = time.perf_counter()
        out[name] = run(name)
        print(f"{name}: {out[name]['model_sha256'][:12]} ({time.perf_counter() - started:.1f} s)", flush=True)
    Path(args.output).write_text(json.dumps(out, indent=1, sort_keys=True, default=str))
    if not args.compare:
        return 0
    before = json.loads(Path(args.compare).read_text())
    bad = 0
    for name in out:
        if name not in before:
            continue
        diff = differences(before[name], json.loads(json.dumps(out[name], default=str)))
        if diff:
            bad += 1
            print(f"DIFFERS {name}:\n  " + "\n  ".join(diff[:12]))
    print(f"{len(out) - bad} of {len(out)} cases identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
