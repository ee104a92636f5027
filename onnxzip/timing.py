"""Seconds per phase of a zip, and the process's peak memory.

``with record() as phases:`` collects; inside it, ``with phase("statistics"):`` anywhere in the
pipeline adds the block's wall time to that phase, less the time of the phases nested in it (each
second counts in one phase: the phases add up to at most the total). Outside a ``record`` block,
``phase`` costs nothing but a clock read.
"""
from __future__ import annotations

import contextvars
import ctypes
import ctypes.util
import functools
import gc
import os
import resource
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

_current: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("onnxzip_phases", default=None)
#: per open phase (innermost last), the seconds of the phases nested in it so far
_nested: contextvars.ContextVar[list[float]] = contextvars.ContextVar("onnxzip_nested")
_say: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar("onnxzip_say", default=None)
#: the phases that raised the process's peak memory: phase -> the peak (MB) when it ended, and the
#: highest peak attributed so far (an inner phase, ending first, claims a rise before the one around it)
_peaks: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("onnxzip_peaks", default=None)

#: the phases said as they start (outside any other phase), in words; the layer loop has its own progress
SAID = {"load": "loading, normalizing and aligning the models", "originals": "running the originals on the data",
        "fisher": "loss statistics (gradients through ONNX Runtime)",
        "budget": "predicting each group's sharing costs (one pass over the originals)",
        "emit": "writing the zipped graph", "verify": "checking the zipped model against the originals",
        "distill": "distilling from the originals",
        "finetune": "fine-tuning on the labels"}


@contextmanager
def record(say: Callable[[str], None] | None = None) -> Iterator[dict[str, float]]:
    """Collect phase seconds into the yielded dict (phase name -> seconds); ``say`` is told each
    phase of :data:`SAID` the first time it starts."""
    phases: dict[str, float] = {}
    token, nested, told, peaks = _current.set(phases), _nested.set([]), _say.set(say), _peaks.set({"": peak_rss_mb()})
    try:
        yield phases
    finally:
        _current.reset(token)
        _nested.reset(nested)
        _say.reset(told)
        _peaks.reset(peaks)


def peak_phase(phases: dict[str, float]) -> str | None:
    """Inside :func:`record` (``phases`` its dict): the phase during which the process's peak memory
    was last raised (None if no phase raised it)."""
    peaks = {k: v for k, v in (_peaks.get() or {}).items() if k}
    return max(peaks, key=peaks.get) if peaks else None


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the block's wall time, less its nested phases', to phase ``name`` of the active
    :func:`record`, if any."""
    phases = _current.get()
    if phases is None:
        yield
        return
    stack = _nested.get()
    say = _say.get()
    if say is not None and not stack and name in SAID and name not in phases:
        say(SAID[name])
    start = time.perf_counter()
    stack.append(0.0)
    try:
        yield
    finally:
        elapsed, inner = time.perf_counter() - start, stack.pop()
        phases[name] = phases.get(name, 0.0) + elapsed - inner
        if stack:
            stack[-1] += elapsed
        peaks, now = _peaks.get(), peak_rss_mb()
        if peaks is not None and now > max(peaks.values()):
            peaks[name] = now


@functools.lru_cache(maxsize=None)
def gemm_gflops(rows: int = 4096, width: int = 384, repeats: int = 5, seconds: float = 0.25) -> float:
    """numpy's float32 X'X rate here (the statistics' product), 1e9 multiply-adds per second of its
    symmetric half: the best of ``rows`` x ``width`` products after a warm-up, at least ``repeats`` of
    them and for at least ``seconds`` (a few cold products, BLAS threads starting, read 3 G/s where
    the same machine does 28). Measured once per process."""
    import numpy as np
    x = np.random.default_rng(0).normal(size=(rows, width)).astype(np.float32)
    x.T @ x  # (warm-up)
    best, began, done = float("inf"), time.perf_counter(), 0
    while done < repeats or time.perf_counter() - began < seconds:
        start = time.perf_counter()
        x.T @ x
        best = min(best, time.perf_counter() - start)
        done += 1
    return rows * width * (width + 1) / 2 / max(best, 1e-9) / 1e9


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1e3  # bytes on macOS, KiB elsewhere


def rss_mb() -> float:
    """The process's resident memory now, in MB (the peak so far where the platform does not say)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError, AttributeError):
        return peak_rss_mb()


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def release_memory(collect: bool = False) -> None:
    """Give memory freed since (ONNX Runtime sessions, a phase's arrays) back to the system: glibc
    keeps freed blocks in its heap, resident, so a later phase's peak stacks on an earlier one's
    (measured: 1.2 GB still resident after the originals' pass of the BERT-base pair). ``collect``:
    first free what only reference cycles hold (15 ms a call here: not at every cut). No-op where
    the C library has no ``malloc_trim``."""
    if collect:
        gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
