"""Pair costs and Hessian-weighted merging for one layer (pure numpy/scipy; the pairs are chosen
by :mod:`onnxzip.sharing.assign`).

Notation (one layer, tasks A and B): each neuron is a row vector over the layer's input columns
with the bias as a column. Columns are ordered ``[shared inputs..., bias | private inputs...]``:
the first ``ns`` columns (the shared inputs and the bias) may be stored once for both tasks; the
rest feed on each task's private input channels and stay per task.

For a shared pair (a, b) with Hessians H_A, H_B over all columns, onnxzip minimises
``1/2 (w_A - a)' H_A (w_A - a) + 1/2 (w_B - b)' H_B (w_B - b)`` where w_A, w_B agree on the first
``ns`` columns and are free on the private ones. Eliminating the private columns leaves the Schur
complements S_t = H_ss - H_sp H_pp^-1 H_ps, and

* merged shared block  w_s = (S_A + S_B)^-1 (S_A a_s + S_B b_s),
* pair cost           dE = 1/2 (a_s - b_s)' M (a_s - b_s),  M = S_A (S_A + S_B)^-1 S_B,
* private columns     p_t = t_p - H_pp^-1 H_ps (w_s - t_s)   (each task compensates its own).

With no private columns this is MTZ exactly (He et al., NeurIPS 2018); with them it is the exact
minimiser, a closed-form improvement over keeping the private weights unchanged.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve

from ..errors import NumericalError
from .assign import pick
from .lowrank import LowRank, solve


def damping_of(h: np.ndarray, rel: float) -> float:
    """The damping :func:`damp` adds: ``rel * mean(diag(h))``, at least 1e-12."""
    return relative_damping(float(np.mean(np.diag(h))), rel)


def relative_damping(mean_diag: float, rel: float) -> float:
    """``rel`` times a Hessian's mean diagonal, at least 1e-12 (:func:`damping_of`)."""
    return max(rel * mean_diag, 1e-12)


def damp(h: np.ndarray, rel: float) -> np.ndarray:
    """``h + damping_of(h, rel) * I``: makes a PSD Hessian positive definite."""
    return h + damping_of(h, rel) * np.eye(h.shape[0])


def cholesky(m: np.ndarray):
    """``cho_factor(m)`` for ``cho_solve``; a matrix that is not positive definite is a :class:`NumericalError`."""
    try:
        return cho_factor(m)
    except LinAlgError:
        raise NumericalError("a Hessian is not positive definite after damping; raise --damping") from None


def schur(h: np.ndarray, ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Eliminate the private block of ``h``.

    Args:
        h: (d, d) float64 positive definite, columns ``[shared (ns) | private (d - ns)]``.
    Returns:
        S (ns, ns): the Schur complement; G (d - ns, ns) = H_pp^-1 H_ps, the private compensation map.
    """
    h_ss, h_sp, h_pp = h[:ns, :ns], h[:ns, ns:], h[ns:, ns:]
    if h_pp.size == 0:
        return h_ss.copy(), np.zeros((0, ns))
    g = cho_solve(cholesky(h_pp), h_sp.T)
    s = h_ss - h_sp @ g
    return (s + s.T) / 2, g


def pair_costs(a_s: np.ndarray, b_s: np.ndarray, s_a: np.ndarray, s_b: np.ndarray) -> np.ndarray:
    """All pair costs at once: ``C[i, j] = 1/2 (a_i - b_j)' M (a_i - b_j)``.

    Args:
        a_s: (nA, ns) A's neurons over the shared columns; b_s: (nB, ns).
        s_a, s_b: (ns, ns) the tasks' (Schur-reduced) Hessians.
    Returns:
        (nA, nB) float64, M = S_A (S_A + S_B)^-1 S_B.
    """
    m = s_a @ solve(s_a + s_b, s_b)
    return _all_pairs(a_s, b_s, m)


#: pair costs below this fraction of their expanded terms lost digits to cancellation: recomputed
CANCELLATION = 1e-6


def _all_pairs(a: np.ndarray, b: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``C[i, j] = 1/2 (a_i - b_j)' Q (a_i - b_j)`` for all pairs, as matrix products (Q symmetrized).

    The expanded form a'Qa/2 + b'Qb/2 - a'Qb loses digits for nearly equal neurons (a relative error
    of eps * (a'Qa + b'Qb) / C): those entries (below ``CANCELLATION`` of the expanded terms, about
    one per neuron of a near-copy) are recomputed from the difference itself.
    """
    q = (q + q.T) / 2
    aq, bq = a @ q, b @ q
    aa, bb = (aq * a).sum(axis=1), (bq * b).sum(axis=1)
    c = 0.5 * (aa[:, None] + bb[None, :]) - aq @ b.T
    ii, jj = np.nonzero(c <= CANCELLATION * 0.5 * (np.abs(aa)[:, None] + np.abs(bb)[None, :]))
    for start in range(0, ii.size, 4096):
        i, j = ii[start:start + 4096], jj[start:start + 4096]
        d = a[i] - b[j]
        c[i, j] = 0.5 * ((d @ q) * d).sum(axis=1)
    return np.maximum(c, 0.0)


def split_costs(a_s: np.ndarray, b_s: np.ndarray, s_a: np.ndarray, s_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each task's own share of every pair's cost at the merged optimum: (E_A, E_B), (nA, nB) each.

    With T = (S_A + S_B)^-1, w - a = T S_B (b - a), so E_A uses Q_A = S_B T S_A T S_B and E_B uses
    Q_B = S_A T S_B T S_A; E_A + E_B equals :func:`pair_costs`. Weighting them by each neuron's loss
    gradient statistic puts the cost in loss units.
    """
    total = s_a + s_b
    if isinstance(total, LowRank):
        inv = total.inverse()
        ta, tb = inv @ s_a, inv @ s_b  # T S_A, T S_B
    else:
        factor = cholesky(total)
        ta, tb = cho_solve(factor, s_a), cho_solve(factor, s_b)
    return _all_pairs(a_s, b_s, tb.T @ s_a @ tb), _all_pairs(a_s, b_s, ta.T @ s_b @ ta)


def task_blocks(h: np.ndarray, ns: int, compensate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(S, G) for one task: the Schur complement and compensation map (:func:`schur`), or with
    ``compensate=False`` the paper's rule: the shared block of H alone and no compensation."""
    if compensate:
        return schur(h, ns)
    return h[:ns, :ns].copy(), np.zeros((h.shape[0] - ns, ns))


def merge_rows(mats: list[np.ndarray], hs: list[np.ndarray], ns: int, compensate: bool = True,
               weights: list[np.ndarray] | None = None, blocks: list[tuple[np.ndarray, np.ndarray]] | None = None
               ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Merge matched rows of every task into one shared block.

    Hessians and blocks may be :class:`onnxzip.sharing.lowrank.LowRank` (wide layers): the same algebra.

    Args:
        mats: per task (k, d): the rows to merge, in slot order, columns ``[shared (ns) | private]``.
        hs: per task (d, d) positive definite Hessians, same column order.
        blocks: per task :func:`task_blocks` of ``hs``, when already computed.
    Returns:
        w (k, ns) = (sum S_t)^-1 sum S_t a_t, the private columns per task (k, d - ns) re-solved,
        and the cost per slot: sum_t 1/2 (w - a_t)' S_t (w - a_t) (the objective at its minimum),
        each task's term times its row's loss weight where ``weights`` (per task (k,)) are given.
    """
    blocks = blocks or [task_blocks(h, ns, compensate) for h in hs]
    total = sum(s for s, _ in blocks)
    rhs = sum(s @ np.asarray(m[:, :ns], np.float64).T for (s, _), m in zip(blocks, mats))
    w = solve(total, rhs).T
    privs, costs = [], np.zeros(w.shape[0])
    for t, ((s, g), m) in enumerate(zip(blocks, mats)):
        diff = w - m[:, :ns]
        privs.append(m[:, ns:] - diff @ g.T)
        costs += 0.5 * ((diff @ s) * diff).sum(axis=1) * (1.0 if weights is None else weights[t])
    return w, privs, costs


def match_tasks(members: list[tuple], k: int, matching: str,
                order: list[int], unit: int = 1) -> tuple[list[np.ndarray], np.ndarray, str]:
    """Choose ``k`` shared slots across tasks, merging tasks in ``order`` into a running shared set.

    Args:
        members: per layer of the group, (per task (n, ns) rows over the shared columns,
            per task (ns, ns) S[, per task (n,) loss weights or None]). The group's cost matrix is
            the sum over its layers; with loss weights, each task's share of a pair's cost is
            weighted by its neuron's weight (the shared side carries the sum of its neurons').
        order: task indices; the first two are matched, each further task is matched against the
            shared side, which carries S_S = the sum of its tasks' S (M = S_S (S_S + S_t)^-1 S_t).
        unit: neurons that move together (a tied attention head's width: :func:`match_units`).
    Returns:
        per task (k,) the neuron of each slot (slot order: cheapest first; by whole units), and the
        joint cost of each slot (k,) (its sum is the total to compare task orders by), and how the
        pairs were found (:class:`onnxzip.sharing.assign.Pairs` ``method``; the first one that differs).
    """
    members = [tuple(x) + (None,) * (3 - len(x)) for x in members]
    t0, t1 = order[0], order[1]
    c = sum(_weighted(m[t0], m[t1], s[t0], s[t1], None if f is None else f[t0], None if f is None else f[t1])
            for m, s, f in members)
    i0, i1, method = pick(matching, c, k, unit)
    costs = c[i0, i1]
    first = np.lexsort((i0, costs)) if unit == 1 else np.arange(k)  # (units come cheapest first)
    rows = {t0: i0[first], t1: i1[first]}
    shared = []
    for m, s, f in members:
        total = s[t0] + s[t1]
        w = solve(total, s[t0] @ m[t0][rows[t0]].T + s[t1] @ m[t1][rows[t1]].T).T
        weight = None if f is None else f[t0][rows[t0]] + f[t1][rows[t1]]
        shared.append((w, total, weight))
    for t in order[2:]:
        c = sum(_weighted(w, m[t], total, s[t], weight, None if f is None else f[t])
                for (w, total, weight), (m, s, f) in zip(shared, members))
        slots, picked, how = pick(matching, c, k, unit)
        method = method if how == method else f"{method}; {how}"
        rows[t] = picked[np.argsort(slots)]
        shared = [(solve(total + s[t], total @ w.T + s[t] @ m[t][rows[t]].T).T, total + s[t],
                   None if f is None else weight + f[t][rows[t]])
                  for (w, total, weight), (m, s, f) in zip(shared, members)]
    cost = np.zeros(k)
    for (w, _, _), (m, s, f) in zip(shared, members):
        for t in order:
            diff = w - m[t][rows[t]]
            per_slot = 0.5 * ((diff @ s[t]) * diff).sum(axis=1)
            cost += per_slot if f is None else per_slot * f[t][rows[t]]
    return [rows[t] for t in range(len(order))], cost, method


def _weighted(a: np.ndarray, b: np.ndarray, s_a: np.ndarray, s_b: np.ndarray, f_a: np.ndarray | None,
              f_b: np.ndarray | None) -> np.ndarray:
    """Pair costs, in loss units when both sides carry per-neuron loss weights."""
    if f_a is None or f_b is None:
        return pair_costs(a, b, s_a, s_b)
    e_a, e_b = split_costs(a, b, s_a, s_b)
    return f_a[:, None] * e_a + f_b[None, :] * e_b


def merge_followers(mats: list[np.ndarray], hs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Merge depthwise neurons slot by slot, each with its own input channel's Hessian.

    Args:
        mats: per task (k, d) the neurons of the shared slots; hs: per task (k, d, d).
    Returns:
        w (k, d) = (sum H_t)^-1 sum H_t a_t per slot, and the cost per slot.
    """
    total = sum(hs)
    w = np.linalg.solve(total, sum(np.einsum("kij,kj->ki", h, m)[..., None] for h, m in zip(hs, mats)))[..., 0]
    costs = sum(0.5 * ((w - m)[:, None, :] @ h @ (w - m)[:, :, None])[:, 0, 0] for h, m in zip(hs, mats))
    return w, costs
