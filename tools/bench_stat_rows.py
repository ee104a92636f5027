"""Rows per statistic (``--stat-rows``): zip time and held-out quality at several row caps.

    python tools/fetch_real.py && python tools/bench_stat_rows.py [--set ocr_det] [--rows 16384,32768,131072,0] [--update]

Per cap: the zip at ``--share 0.5`` (and ``--target-params 0.9``), its wall time and the time of its
statistics phases, the rows the largest statistic read, and per task the held-out figure of
``tools/bench_real.py`` (mask IoU against the original for the detectors). 0 reads every row.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from bench_real import load_set, quality  # noqa: E402  (tools/bench_real.py)
from results import update_section  # noqa: E402

from onnxzip import zip_models  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="ocr_det")
    parser.add_argument("--rows", default="16384,32768,131072,0")
    parser.add_argument("--settings", default="share=0.5,target_params=0.9")
    parser.add_argument("--update", action="store_true")
    args = parser.parse_args()
    models, tasks, calib, test = load_set(args.set)
    lines = ["| setting | --stat-rows | rows read (most, least) | layers subsampled | zip s | statistics s | "
             "held-out quality per task |", "|---|---:|---|---:|---:|---:|---|"]
    started = time.perf_counter()
    for setting in args.settings.split(","):
        key, value = setting.split("=")
        for most in (int(r) for r in args.rows.split(",")):
            start = time.perf_counter()
            result = zip_models(models, calib, names=tasks, quiet=True, stat_rows=most, **{key: float(value)})
            seconds = time.perf_counter() - start
            rows = [r for r in result.summary.layers if r.stat_rows]
            cut = sum(1 for r in rows if r.rows_read < 1.0)
            phases = result.summary.phases or {}
            figures = quality(args.set, result.model, models, tasks, test)
            lines.append(f"| {key.replace('_', '-')} {value} | {most or 'all'} | {max(r.stat_rows for r in rows):,}, "
                         f"{min(r.stat_rows for r in rows):,} | {cut} | {seconds:.0f} | "
                         f"{phases.get('statistics', 0.0):.0f} | {' / '.join(figures)} |")
            print(lines[-1], flush=True)
    body = (f"Run: `python tools/bench_stat_rows.py --set {args.set} --rows {args.rows}` on {platform.machine()}, "
            f"ONNX Runtime CPU, {time.strftime('%Y-%m-%d')} ({time.perf_counter() - started:.0f} s).\n\n"
            + "\n".join(lines) + "\n")
    print(body)
    if args.update:
        update_section("bench_stat_rows", "Rows per statistic (issue 23, item 3)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
