"""Tied attention heads proven on samples before any zip relies on them.

:func:`onnxzip.graph.attention.tied_heads` reads a block's structure from the graph; the tie is
sound only if the block's core treats every head alike and Q's and K's channels within a head in one
order. The proof: each task's normalized model, with Q, K and V's neurons moved by a random
permutation of whole heads (and of the channels within each head) and the output projection's
columns moved to match, must compute what it computed, on a few calibration samples. A block that
fails is untied (its core then reads each task's own channel order, as before heads were tied).
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import onnx
from onnx import numpy_helper

from ..calibrate import runtime
from ..graph.attention import TiedHeads
from ..graph.ir import ModelIR
from ..graph.spaces import trace

log = logging.getLogger(__name__)
#: calibration samples each task runs for the proof
SAMPLES = 4
#: largest difference allowed, relative to the output's largest magnitude (float32 sums in another order)
TOLERANCE = 1e-4


def head_permutation(heads: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(heads * width,) new position -> neuron: the heads in a random order that moves every head,
    each head's channels in a random order of their own that moves every channel (no part left
    where it was, so that no head and no channel escapes the proof)."""
    return np.concatenate([h * width + _cycle(width, rng) for h in _cycle(heads, rng)])


def _cycle(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of ``n`` that is one n-cycle (it moves every element when n > 1)."""
    r = rng.permutation(n)
    p = np.empty(n, np.int64)
    p[r] = np.roll(r, 1)
    return p


def permuted(ir: ModelIR, blocks: list[TiedHeads], perms: dict[int, np.ndarray]) -> onnx.ModelProto:
    """The task's normalized model with each block's Q, K and V rows (weights and bias) taken in the
    order ``perms[block.q]`` and its output projection's columns to match."""
    model = ir.to_onnx()
    inits = {t.name: t for t in model.graph.initializer}

    def move(name: str, perm: np.ndarray, axis: int) -> None:
        t = inits[name]
        t.CopyFrom(numpy_helper.from_array(np.take(numpy_helper.to_array(t), perm, axis=axis), name))

    for h in blocks:
        perm = perms[h.q]
        for li in (h.q, h.k, h.v):
            move(ir.layers[li].weight, perm, 0)
            move(ir.layers[li].bias, perm, 0)
        move(ir.layers[h.out].weight, perm, 1)
    return model


def failing(ir: ModelIR, arrays: dict[str, np.ndarray], device: str = "cpu", seed: int = 0) -> set[int]:
    """The Q layers (indices) of the task's tied blocks whose core does not compute the same under a
    whole-head permutation (all blocks at once; one by one where that fails)."""
    blocks = ir.spaces.heads
    if not blocks or not arrays:
        return set()
    n = ir.fixed_batch or min(SAMPLES, next(iter(arrays.values())).shape[0])
    feeds = {k: v[:n] for k, v in arrays.items()}
    rng = np.random.default_rng(seed)
    perms = {h.q: head_permutation(h.heads, h.width, rng) for h in blocks}

    def outputs(model: onnx.ModelProto) -> list[np.ndarray]:
        sess = runtime.session(model, device, built=True)
        return runtime.quiet_run(sess, None, feeds, f"task {ir.name!r} with its heads moved", built=True)

    base = outputs(ir.to_onnx())
    if _same(outputs(permuted(ir, blocks, perms)), base):
        return set()
    return {h.q for h in blocks if not _same(outputs(permuted(ir, [h], perms)), base)}


def _same(got: list, want: list) -> bool:
    """Outputs equal up to float32 reordering noise (exactly where not float)."""
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        if w.dtype.kind != "f":
            if not np.array_equal(g, w):
                return False
        elif np.abs(g - w).max(initial=0.0) > TOLERANCE * max(float(np.abs(w).max(initial=0.0)), 1e-6):
            return False
    return True


def prove_heads(irs: list[ModelIR], arrays: list[dict[str, np.ndarray]], device: str = "cpu") -> list[ModelIR]:
    """``irs`` with every tied block that fails :func:`failing` in any task untied in all of them
    (their channel spaces traced again), said in the log."""
    bad: set[int] = set()
    for ir, a in zip(irs, arrays):
        bad |= failing(ir, a, device)
    if not bad:
        return irs
    log.info("attention heads not tied (their core does not treat every head alike on the samples): %s",
             ", ".join(irs[0].layers[q].name for q in sorted(bad)))
    return [replace(ir, spaces=trace(ir.graph, ir.layers, ir.spaces.untied | {ir.layers[q].name for q in bad}))
            for ir in irs]
