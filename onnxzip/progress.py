"""Progress of long work on stderr: a bar on a terminal, else a line every few seconds."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Sequence

import numpy as np

#: without a terminal, a progress line at most this often (seconds)
PROGRESS_EVERY = 5.0


def progress(items: Iterable, desc: str, quiet: bool, weights: Sequence[float] | None = None) -> Iterable:
    """Progress on stderr unless ``quiet``: a bar on a terminal, else a line every few seconds
    (``desc i/n, elapsed, ETA``), so that a slow run can be told from a hung one in a log.

    ``weights``: each item's expected share of the work (e.g. a layer's statistics size); the ETA is
    the time so far scaled by the weight left over the weight done, not by the count of items."""
    if quiet:
        return items
    if sys.stderr.isatty() and weights is None:
        from tqdm import tqdm
        return tqdm(items, desc=desc, leave=False)
    return _progress_lines(list(items), desc, weights)


def _progress_lines(items: list, desc: str, weights: Sequence[float] | None) -> Iterable:
    w = np.ones(len(items)) if weights is None else np.maximum(np.asarray(weights, np.float64), 1e-12)
    done = np.concatenate([[0.0], np.cumsum(w)])
    start = last = time.perf_counter()
    for i, item in enumerate(items):
        now = time.perf_counter()
        if i and now - last >= PROGRESS_EVERY:
            eta = (now - start) * (done[-1] - done[i]) / done[i]
            print(f"onnxzip: {desc} {i}/{len(items)}, {now - start:.0f} s, about {eta:.0f} s to go", file=sys.stderr,
                  flush=True)
            last = now
        yield item
