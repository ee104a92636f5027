"""Seconds per phase of a zip, and the process's peak memory.

``with record() as phases:`` collects; inside it, ``with phase("statistics"):`` anywhere in the
pipeline adds the block's wall time to that phase, less the time of the phases nested in it (each
second counts in one phase: the phases add up to at most the total). Outside a ``record`` block,
``phase`` costs nothing but a clock read.
"""
from __future__ import annotations

import contextvars
import resource
import sys
import time
from contextlib import contextmanager
from typing import Iterator

_current: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("onnxzip_phases", default=None)
#: per open phase (innermost last), the seconds of the phases nested in it so far
_nested: contextvars.ContextVar[list[float]] = contextvars.ContextVar("onnxzip_nested")


@contextmanager
def record() -> Iterator[dict[str, float]]:
    """Collect phase seconds into the yielded dict (phase name -> seconds)."""
    phases: dict[str, float] = {}
    token, nested = _current.set(phases), _nested.set([])
    try:
        yield phases
    finally:
        _current.reset(token)
        _nested.reset(nested)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the block's wall time, less its nested phases', to phase ``name`` of the active
    :func:`record`, if any."""
    phases = _current.get()
    if phases is None:
        yield
        return
    stack = _nested.get()
    start = time.perf_counter()
    stack.append(0.0)
    try:
        yield
    finally:
        elapsed, inner = time.perf_counter() - start, stack.pop()
        phases[name] = phases.get(name, 0.0) + elapsed - inner
        if stack:
            stack[-1] += elapsed


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1e3  # bytes on macOS, KiB elsewhere
