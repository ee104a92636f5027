"""Seconds per phase of a zip, and the process's peak memory.

``with record() as phases:`` collects; inside it, ``with phase("statistics"):`` anywhere in the
pipeline adds the block's wall time to that phase (nested phases count in both). Outside a
``record`` block, ``phase`` costs nothing but a clock read.
"""
from __future__ import annotations

import contextvars
import resource
import sys
import time
from contextlib import contextmanager
from typing import Iterator

_current: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("onnxzip_phases", default=None)


@contextmanager
def record() -> Iterator[dict[str, float]]:
    """Collect phase seconds into the yielded dict (phase name -> seconds)."""
    phases: dict[str, float] = {}
    token = _current.set(phases)
    try:
        yield phases
    finally:
        _current.reset(token)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the block's wall time to phase ``name`` of the active :func:`record`, if any."""
    start = time.perf_counter()
    try:
        yield
    finally:
        phases = _current.get()
        if phases is not None:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - start


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1e3  # bytes on macOS, KiB elsewhere
