"""Progress of long work on stderr: a bar on a terminal, else a line every few seconds."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Sequence

import numpy as np

#: without a terminal, a progress line at most this often (seconds)
PROGRESS_EVERY = 5.0


def progress(items: Iterable, desc: str, quiet: bool, work: Sequence[Sequence[float]] | None = None) -> Iterable:
    """Progress on stderr unless ``quiet``: a bar on a terminal, else a line every few seconds
    (``desc i/n, elapsed, ETA``), so that a slow run can be told from a hung one in a log.

    ``work``: per item, features its time grows with (e.g. a layer's activation size and statistic
    size); the ETA then comes from the items done: their seconds fitted as a non-negative
    combination of 1 and the features (:func:`eta`), summed over the items left."""
    if quiet:
        return items
    if sys.stderr.isatty() and work is None:
        from tqdm import tqdm
        return tqdm(items, desc=desc, leave=False)
    return _progress_lines(items if hasattr(items, "__len__") else list(items), desc, work)


#: items done before an ETA is fitted to their features (before: seconds per item so far)
FIT_AFTER = 4


def eta(done: np.ndarray, seconds: np.ndarray, left: np.ndarray) -> float:
    """Seconds to go: ``seconds`` (k,) of the items done fitted as ``[1, features] @ c``, c >= 0, on
    ``done`` (k, f), then summed over ``left`` (m, f); the mean per item until ``FIT_AFTER`` are done."""
    if len(seconds) < FIT_AFTER or done.shape[1] == 0:
        return float(seconds.mean() * len(left)) if len(seconds) else 0.0
    from scipy.optimize import nnls
    scale = np.maximum(np.abs(np.vstack([done, left])).max(axis=0), 1e-30)
    x = np.hstack([np.ones((len(done), 1)), done / scale])
    c, _ = nnls(x, seconds)
    return float((np.hstack([np.ones((len(left), 1)), left / scale]) @ c).sum())


def _progress_lines(items: Sequence, desc: str, work: Sequence[Sequence[float]] | None) -> Iterable:
    # (items alike, such as a billion training steps: no per-item arrays, the mean so far)
    features = None if work is None else np.asarray(work, np.float64).reshape(len(items), -1)
    seconds = np.zeros(len(items) if work is not None else 0)
    start = last = before = time.perf_counter()
    print(f"onnxzip: {desc} 0/{len(items)}", file=sys.stderr, flush=True)
    for i, item in enumerate(items):
        now = time.perf_counter()
        if i and work is not None:
            seconds[i - 1] = now - before
        before = now
        if i and now - last >= PROGRESS_EVERY:
            # items of unequal work get an ETA once it can be fitted (the first ones, the largest
            # layers of a detector, put the mean per item 3-4x high)
            if work is None:
                togo = (now - start) / i * (len(items) - i)
            elif i >= FIT_AFTER:
                togo = eta(features[:i], seconds[:i], features[i:])
            else:
                togo = None
            left = f", about {togo:.0f} s to go" if togo is not None else ""
            print(f"onnxzip: {desc} {i}/{len(items)}, {now - start:.0f} s{left}", file=sys.stderr, flush=True)
            last = now
        yield item
