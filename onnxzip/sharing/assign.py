"""Choosing ``k`` one-to-one neuron pairs from a pair-cost matrix (pure numpy/scipy).

``MATCHERS`` holds the interchangeable methods; each takes ``(C: (nA, nB) float64 costs, k)``
and returns :class:`Pairs`. ``optimal`` is exact: small matrices by a dense rectangular
assignment; from :data:`SPARSE_FROM` neurons, by a linear program over candidate pairs whose dual
solution proves the pairs optimal over the whole matrix, or within :data:`GAP` of it (at 3,072
neurons, half of them paired: 3.6 s against 26 s dense on Hessian costs, 17 s against 41 s on the
BERT-base pair's loss-weighted ones), where it cannot, by the dense assignment.
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment, linprog

from ..registry import Registry


class Pairs(NamedTuple):
    """``k`` pairs: row ``ia[i]`` of the cost matrix with column ``ib[i]`` (int64 (k,) each), and how
    they were found (the report's ``matching``)."""

    ia: np.ndarray
    ib: np.ndarray
    method: str


#: Matchers: ``(C: (nA, nB) float64 costs, k) -> Pairs``.
MATCHERS: Registry[Callable[[np.ndarray, int], Pairs]] = Registry("matching method")

#: the smaller side's neurons from which ``optimal`` solves on sparse candidates first (the dense
#: solve grows as n^3: at 2,048 on ResNet-50's loss-weighted costs it took 12 s and the sparse
#: program ran past 30 s; at 3,072 on BERT-base's, 37-41 s against 17-22 s)
SPARSE_FROM = 3072
#: the most pairs, as a fraction of the smaller side, that ``optimal`` seeks on sparse candidates
#: (at 3,072 neurons: half of them 3 s against 26 s dense, three quarters 12 s against 28 s,
#: 94% 20-58 s against 4 s)
SPARSE_UP_TO = 0.75
#: each neuron's cheapest partners that start the sparse program (each way; twice as many past half)
CANDIDATES = 16
#: programs solved, each adding the pairs the last one's duals priced below zero, before the dense solve
ROUNDS = 8
#: reduced costs above ``-TOLERANCE * max |C|`` count as non-negative (HiGHS's own dual tolerance)
TOLERANCE = 1e-7
#: pairs within this fraction of the programs' lower bound on the optimum are taken as they are
GAP = 1e-4
#: ... and called optimal within this fraction, with no pair priced below zero
EXACT = 1e-9
#: seconds the sparse programs of one matching may take before the dense solve takes over
SECONDS = 30.0

DENSE = "optimal (dense assignment)"
CERTIFIED = "optimal (sparse, certified by its duals)"
BOUNDED = f"within {GAP:.2%} of the optimum (sparse, by its dual bound)"


@MATCHERS.register("optimal")
def match_optimal(c: np.ndarray, k: int) -> Pairs:
    """The minimum-total-cost set of ``k`` one-to-one pairs (exact, or proved within :data:`GAP`).

    Large matrices are solved by :func:`match_certified` (up to ``SPARSE_UP_TO`` of the smaller
    side paired); where it cannot prove its pairs, and otherwise, by :func:`match_dense`."""
    n = min(c.shape)
    if n >= SPARSE_FROM and 0 < k <= SPARSE_UP_TO * n:
        pairs = match_certified(c, k, CANDIDATES if 2 * k <= n else 2 * CANDIDATES, ROUNDS, SECONDS)
        if pairs is not None:
            return pairs
        ia, ib = match_dense(c, k)
        return Pairs(ia, ib, f"{DENSE}: the sparse program did not certify in {ROUNDS} rounds and {SECONDS:g} s")
    return Pairs(*match_dense(c, k), DENSE)


def match_dense(c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``k`` pairs by a dense assignment: the smaller side's every neuron is assigned, to
    a neuron of the other side or to one of ``min(na, nb) - k`` dummies whose cost is so negative
    that every dummy is taken, so exactly ``k`` real pairs remain at the least total cost."""
    na, nb = c.shape
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if na > nb:
        ib, ia = match_dense(c.T, k)
        return ia, ib
    if k == na:
        return linear_sum_assignment(c)
    big = 1.0 + 2.0 * float(np.abs(c).max()) * na  # (more than any set of real pairs can differ by)
    padded = np.empty((na, nb + na - k))
    padded[:, :nb] = c
    padded[:, nb:] = -big
    rows, cols = linear_sum_assignment(padded)
    keep = cols < nb
    assert keep.sum() == k, "the assignment must leave exactly k real pairs"
    return rows[keep], cols[keep]


def match_certified(c: np.ndarray, k: int, candidates: int = CANDIDATES, rounds: int = ROUNDS,
                    seconds: float = SECONDS) -> Pairs | None:
    """``k`` pairs from a sparse linear program, proved optimal (or within :data:`GAP` of it), or
    None where it cannot prove them in ``rounds`` solves and ``seconds``.

    The program (``min sum c_ij x_ij``: every row and column used at most once, ``sum x = k``,
    ``x >= 0``) is a min-cost flow: its vertices are integral. It is solved over candidate pairs:
    each neuron's ``candidates`` cheapest partners (both ways) relative to the two neurons' own
    cheapest costs (loss-weighted costs put every row's cheapest pairs on the same few columns), a
    quarter as many by plain cost, and ``k`` pairs ``(i, i)`` that keep it feasible. Its duals
    (u_i, v_j <= 0 per row and column, lambda for the count) price every pair of the matrix:
    ``c_ij - u_i - v_j - lambda``.

    Each v_j lowered until its column prices at zero or more gives a feasible dual of the whole
    program: ``sum u + sum v + k lambda`` bounds the optimum from below.

    * No pair below ``-TOLERANCE * max |C|`` and the pairs' total within :data:`EXACT` of the
      bound: optimal (:data:`CERTIFIED`).
    * Else within :data:`GAP` of the bound: returned as such (:data:`BOUNDED`).
    * Else the pairs priced below zero (each such neuron's ``candidates`` most negative) are added
      and the program solved again.
    """
    na, nb = c.shape
    scale = float(np.abs(c).max())
    if not np.isfinite(scale) or scale == 0.0:
        return None
    deadline = time.perf_counter() + seconds
    mask = np.zeros(c.shape, bool)
    mask[np.arange(k), np.arange(k)] = True  # k disjoint pairs: the program is feasible
    everyone = np.ones(na, bool), np.ones(nb, bool)
    floor = 1e-12 * scale  # (a neuron whose cheapest cost is 0: its candidates by plain cost, in effect)
    relative = c / np.sqrt(np.maximum(c.min(axis=1), floor))[:, None]
    relative /= np.sqrt(np.maximum(c.min(axis=0), floor))[None, :]
    _add_cheapest(relative, mask, candidates, *everyone)
    del relative
    _add_cheapest(c, mask, max(candidates // 4, 1), *everyone)
    for _ in range(rounds):
        ii, jj = np.nonzero(mask)
        left = deadline - time.perf_counter()
        solved = _flow_program(c[ii, jj] / scale, ii, jj, na, nb, k, left) if left > 0 else None
        if solved is None:
            return None
        chosen, u, v, lam = solved
        u, v = np.minimum(u, 0.0), np.minimum(v, 0.0)
        pairs = ii[chosen].astype(np.int64), jj[chosen].astype(np.int64)
        reduced = c / scale - (u + lam)[:, None]
        reduced -= v[None, :]
        priced_out = (reduced < -TOLERANCE) & ~mask
        total = float(c[pairs].sum()) / scale
        bound = float(u.sum() + (v + np.minimum(reduced.min(axis=0), 0.0)).sum() + k * lam)
        if not priced_out.any() and total - bound <= EXACT * abs(total):
            return Pairs(*pairs, CERTIFIED)
        if total - bound <= GAP * abs(total):
            return Pairs(*pairs, BOUNDED)
        reduced[mask] = np.inf
        _add_cheapest(reduced, mask, candidates, priced_out.any(axis=1), priced_out.any(axis=0))
    return None


def _add_cheapest(c: np.ndarray, mask: np.ndarray, m: int, rows: np.ndarray, cols: np.ndarray) -> None:
    """Mark in ``mask`` the ``m`` cheapest columns of each of ``rows`` (bool (na,)) and the ``m``
    cheapest rows of each of ``cols`` (bool (nb,))."""
    na, nb = c.shape
    r = np.nonzero(rows)[0]
    if r.size:
        mask[r[:, None], np.argpartition(c[r], min(m, nb - 1), axis=1)[:, :m]] = True
    j = np.nonzero(cols)[0]
    if j.size:
        mask[np.argpartition(c[:, j], min(m, na - 1), axis=0)[:m, :], j[None, :]] = True


def _flow_program(cost: np.ndarray, ii: np.ndarray, jj: np.ndarray, na: int, nb: int, k: int, seconds: float):
    """Solve the k-pair program over the edges ``(ii, jj)`` (HiGHS, interior point then crossover to
    a vertex). Returns (chosen edges (e,) bool, u (na,), v (nb,), lambda), or None where it found no
    integral vertex within ``seconds``."""
    e = ii.size
    edges = np.arange(e)
    a_ub = sparse.csr_matrix((np.ones(2 * e), (np.concatenate([ii, na + jj]), np.concatenate([edges, edges]))),
                             shape=(na + nb, e))
    res = linprog(cost, A_ub=a_ub, b_ub=np.ones(na + nb), A_eq=sparse.csr_matrix(np.ones((1, e))), b_eq=[k],
                  bounds=(0, None), method="highs-ipm", options={"time_limit": seconds})
    if res.status != 0 or res.x is None:
        return None
    chosen = res.x > 0.5
    if chosen.sum() != k or np.abs(res.x - chosen).max() > 1e-6:
        return None
    duals = res.ineqlin.marginals
    return chosen, duals[:na], duals[na:], float(res.eqlin.marginals[0])


@MATCHERS.register("greedy")
def match_greedy(c: np.ndarray, k: int) -> Pairs:
    """The MTZ paper's matching: take the cheapest remaining pair, one-to-one, until ``k`` pairs."""
    order = np.argsort(c, axis=None, kind="stable")
    used_a = np.zeros(c.shape[0], bool)
    used_b = np.zeros(c.shape[1], bool)
    ia, ib = [], []
    for flat in order:
        if len(ia) == k:
            break
        i, j = divmod(int(flat), c.shape[1])
        if not used_a[i] and not used_b[j]:
            used_a[i] = used_b[j] = True
            ia.append(i)
            ib.append(j)
    return Pairs(np.asarray(ia, np.int64), np.asarray(ib, np.int64), "greedy")


@MATCHERS.register("index")
def match_index(c: np.ndarray, k: int) -> Pairs:
    """No matching: neuron i of A with neuron i of B, the first ``k`` (the naive baseline)."""
    return Pairs(np.arange(k), np.arange(k), "index")


def pick(matching: str, c: np.ndarray, k: int, unit: int = 1) -> Pairs:
    """``k`` pairs of cost matrix ``c`` by the matcher ``matching``; with ``unit`` > 1, by whole
    units (attention heads of ``unit`` channels, :func:`match_units`)."""
    matcher = MATCHERS.get(matching)
    return matcher(c, k) if unit == 1 else match_units(matcher, c, k, unit)


def match_units(matcher: Callable[[np.ndarray, int], Pairs], c: np.ndarray, k: int, unit: int) -> Pairs:
    """``k`` pairs (a multiple of ``unit``) that pair whole units: rows ``[u*unit, (u+1)*unit)`` of
    ``c`` are one unit, and so are the columns. Every unit pair's cost is its best one-to-one
    pairing within (``matcher``); ``k / unit`` unit pairs are then matched on those costs. Returns
    the pairs unit by unit (cheapest unit first), each unit's pairs in its rows' order, so that
    every ``unit`` consecutive slots hold one unit of each side."""
    if k % unit:
        raise ValueError(f"{k} pairs are not whole units of {unit}")
    na, nb = c.shape[0] // unit, c.shape[1] // unit
    blocks = c.reshape(na, unit, nb, unit).transpose(0, 2, 1, 3)
    unit_cost = np.empty((na, nb))
    within: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for a in range(na):
        for b in range(nb):
            ia, ib, _ = matcher(blocks[a, b], unit)
            order = np.argsort(ia, kind="stable")
            within[a, b] = ia[order], ib[order]
            unit_cost[a, b] = blocks[a, b][ia, ib].sum()
    ua, ub, method = matcher(unit_cost, k // unit)
    first = np.lexsort((ua, unit_cost[ua, ub]))
    i0 = [a * unit + within[a, b][0] for a, b in zip(ua[first], ub[first])]
    i1 = [b * unit + within[a, b][1] for a, b in zip(ua[first], ub[first])]
    if not i0:
        return Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), method)
    return Pairs(np.concatenate(i0), np.concatenate(i1), f"{method}, by whole units of {unit}")
