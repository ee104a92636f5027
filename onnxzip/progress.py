"""Progress of long work on stderr: a bar on a terminal, else a line every few seconds."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Sequence

#: without a terminal, a progress line at most this often (seconds)
PROGRESS_EVERY = 5.0


def progress(items: Iterable, desc: str, quiet: bool, uneven: bool = False) -> Iterable:
    """Progress on stderr unless ``quiet``: a bar on a terminal, else a line every few seconds
    (``desc i/n, elapsed, ETA``), so that a slow run can be told from a hung one in a log.

    ``uneven``: items of unequal work (layers): no ETA until ``FIT_AFTER`` are done, then the mean
    seconds per item so far times the items left. (A fit of each layer's seconds to its sizes was
    tried: on the detector pair it put the ETA 2-8x high, 10-20x on small images, by extrapolating
    the statistics' arithmetic of the last, largest layers; their seconds are mostly fixed costs.)"""
    if quiet:
        return items
    if sys.stderr.isatty() and not uneven:
        from tqdm import tqdm
        return tqdm(items, desc=desc, leave=False)
    return _progress_lines(items if hasattr(items, "__len__") else list(items), desc, uneven)


#: items of unequal work done before an ETA is said (the first layers are not like the rest)
FIT_AFTER = 4


def _progress_lines(items: Sequence, desc: str, uneven: bool) -> Iterable:
    start = last = time.perf_counter()
    print(f"onnxzip: {desc} 0/{len(items)}", file=sys.stderr, flush=True)
    for i, item in enumerate(items):
        now = time.perf_counter()
        if i and now - last >= PROGRESS_EVERY:
            togo = (now - start) / i * (len(items) - i) if not uneven or i >= FIT_AFTER else None
            left = f", about {togo:.0f} s to go" if togo is not None else ""
            print(f"onnxzip: {desc} {i}/{len(items)}, {now - start:.0f} s{left}", file=sys.stderr, flush=True)
            last = now
        yield item
