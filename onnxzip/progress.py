"""Progress of long work on stderr: a bar on a terminal, else a line every few seconds."""
from __future__ import annotations

import sys
import time
from typing import Iterable

#: without a terminal, a progress line at most this often (seconds)
PROGRESS_EVERY = 5.0


def progress(items: Iterable, desc: str, quiet: bool) -> Iterable:
    """Progress on stderr unless ``quiet``: a bar on a terminal, else a line every few seconds
    (``desc i/n, elapsed, ETA``), so that a slow run can be told from a hung one in a log."""
    if quiet:
        return items
    if sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(items, desc=desc, leave=False)
    return _progress_lines(list(items), desc)


def _progress_lines(items: list, desc: str) -> Iterable:
    start = last = time.perf_counter()
    for i, item in enumerate(items):
        now = time.perf_counter()
        if i and now - last >= PROGRESS_EVERY:
            eta = (now - start) / i * (len(items) - i)
            print(f"onnxzip: {desc} {i}/{len(items)}, {now - start:.0f} s, about {eta:.0f} s to go", file=sys.stderr,
                  flush=True)
            last = now
        yield item
