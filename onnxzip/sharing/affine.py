"""Per-task channel affine (``--affine``): after a shared block, each task keeps a scale and a shift
per shared neuron, solved in closed form.

A shared row ``w`` computed on task t's input gives ``u = w . x~`` (``x~`` the input with the bias 1
appended); the task's target pre-activation is ``z = m . x~``. Per row, least squares over the
task's samples gives ``a, b = argmin E[(a u + b - z)^2]``: with the task's uncentered input moment
``H = E[x~ x~']`` that is the 2 x 2 system ``[[w'Hw, w'h], [w'h, 1]] [a, b] = [w'Hm, m'h]``, ``h``
the bias column of ``H``. The task's effective row is ``a w + b e_bias``; the emitted graph keeps
``w`` once and applies ``Mul(a)`` and ``Add(b)`` per task after it.
"""
from __future__ import annotations

import numpy as np

#: a fitted scale smaller than this in magnitude is not kept (the row keeps scale 1 and gets only
#: its best shift): the emitted private columns are the effective ones divided by the scale
MIN_SCALE = 0.1


def fit_affine(h: np.ndarray | None, rows: np.ndarray | None, z: np.ndarray, m: np.ndarray,
               bias: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the scale and shift of least squared error against the targets.

    Args:
        h: (d, d) the task's undamped input moment E[x~ x~'] in the rows' column order, or None with
            ``rows`` (n, d): the input samples themselves (a wide layer's statistic).
        z: (k, d) the merged rows; m: (k, d) their targets; bias: the bias column's index.
    Returns:
        a (k,), b (k,) float64; rows whose system is singular or whose scale is below
        ``MIN_SCALE`` keep a = 1 and the shift alone.
    """
    if h is None:  # H = rows' rows / n, never formed
        u, t, ones = rows @ z.T, rows @ m.T, rows[:, bias]  # (the bias column: 1, or sqrt(sample weight))
        n = rows.shape[0]
        uu, ut, u1, t1 = (u * u).sum(0) / n, (u * t).sum(0) / n, ones @ u / n, ones @ t / n
        one = float(ones @ ones) / n
    else:
        hz = z @ h
        uu, ut = (hz * z).sum(1), (hz * m).sum(1)
        u1, t1, one = z @ h[:, bias], m @ h[:, bias], float(h[bias, bias])
    det = uu * one - u1 ** 2
    solvable = det > 1e-9 * np.maximum(uu * one, 1e-300)
    safe = np.where(solvable, det, 1.0)
    a = np.where(solvable, (ut * one - u1 * t1) / safe, 1.0)
    keep = solvable & (np.abs(a) >= MIN_SCALE)
    a = np.where(keep, a, 1.0)
    b = np.where(keep, (uu * t1 - u1 * ut) / safe, (t1 - u1) / max(one, 1e-300))
    return a, b


def apply_affine(z: np.ndarray, a: np.ndarray, b: np.ndarray, bias: int) -> np.ndarray:
    """The effective rows ``a z + b e_bias`` (k, d)."""
    out = z * a[:, None]
    out[:, bias] += b
    return out
