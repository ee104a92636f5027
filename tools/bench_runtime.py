"""Run-time cost of zipped sample pairs: ``onnxzip bench`` on each, at several shares.

For each pair and share: zip (default options), then latency (median, p90), session memory and
bytes of the zipped model against the two originals run one after another, on ONNX Runtime's CPU
provider (or ``--provider``). ``--update`` puts the table into docs/results.md.

    python tools/bench_runtime.py [--pairs cnn,vit,bert] [--shares 0,0.5,1] [--favors size,speed] [--batch 32] [--update]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from results import update_section  # tools/results.py

from onnxzip import zip_models
from onnxzip.bench import bench
from onnxzip.graph.io import load_arrays

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
PAIRS = {  # name -> (models, calibration, names)
    "cnn": (["cnn_digit.onnx", "cnn_parity.onnx"], ["calib_digit.npz", "calib_parity.npz"], ("digit", "parity")),
    "resnet": (["resnet_digit.onnx", "resnet_parity.onnx"], ["calib_digit.npz", "calib_parity.npz"], ("digit", "parity")),
    "vit": (["vit_digit.onnx", "vit_parity.onnx"], ["calib_digit.npz", "calib_parity.npz"], ("digit", "parity")),
    "bert": (["bert_a.onnx", "bert_b.onnx"], ["calib_bert.npz", "calib_bert.npz"], ("a", "b")),
    "hfvit": (["hfvit_a.onnx", "hfvit_b.onnx"], ["calib_hfvit.npz", "calib_hfvit.npz"], ("a", "b")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="cnn,resnet,vit,bert")
    parser.add_argument("--shares", default="0,0.5,1")
    parser.add_argument("--favors", default="size,speed", help="zip --favor values to compare")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--update", action="store_true")
    args = parser.parse_args()
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs.split(","):
            models, calib, names = PAIRS[pair]
            models = [str(SAMPLES / m) for m in models]
            data = [load_arrays(SAMPLES / c) for c in calib]
            for share, favor in ((float(s), f) for s in args.shares.split(",") for f in args.favors.split(",")):
                r = zip_models(models, [str(SAMPLES / c) for c in calib], share=share, quiet=True, names=names,
                               favor=favor)
                path = Path(tmp) / f"{pair}_{share}_{favor}.onnx"
                r.save(path)
                b = bench(str(path), models, data, provider=args.provider, batch=args.batch, runs=args.runs)
                z, o, q = b["zipped"], b["originals"], b["ratios"]
                rows.append(f"| {pair} | {share:.2f} | {favor} | {len(r.model.graph.node)} | "
                            f"{r.report['params_after'] / r.report['params_before']:.1%} | "
                            f"{z.median_ms:.3f} / {o.median_ms:.3f} | {q['latency']:.2f} | "
                            f"{z.memory_mb:.1f} / {o.memory_mb:.1f} | {q['memory']:.2f} | {q['bytes']:.2f} |")
                print(rows[-1], flush=True)
    body = (f"Run: `python tools/bench_runtime.py --update` on {platform.machine()} ({os.cpu_count()} cores), "
            f"ONNX Runtime {args.provider}, batch {args.batch}, {args.runs} timed runs per side (the sides "
            f"alternating), {time.strftime('%Y-%m-%d')}; {time.perf_counter() - start:.0f} s. Zipped / originals "
            "(the two run one after another); memory: resident memory that loading and running adds to a fresh "
            "process.\n\n"
            "| pair | share | --favor | ops | params kept | median ms | latency ratio | memory MB | memory ratio | "
            "bytes ratio |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n")
    print(body)
    if args.update:
        update_section("bench_runtime", "Run-time cost of the zipped samples (onnxzip bench)", body)


if __name__ == "__main__":
    main()
