"""Per-channel conv statistics in the offset basis, where they are block diagonal (pure numpy).

The per-channel statistic of a conv with ``K`` kernel offsets (:func:`onnxzip.calibrate.stats.expand_conv_hessian`)
is ``H = kron(B, I_K) + u v'`` over the weight columns (channel-major, offsets inner, bias last),
with ``B = Hc_cc - m_x m_y'``, ``u = [m_x (x) 1_K; 1]`` and ``v = [m_y (x) 1_K; 1]``. Take ``Q``
(K, K) orthogonal with ``Q[:, 0] = 1/sqrt(K)`` and give every neuron's per-channel kernel ``W``
(C, K) as its components ``W Q``. In these coordinates H is block diagonal:

* component 0 with the bias, ``H0 = [[B + K m_x m_y', sqrt(K) m_x], [sqrt(K) m_y', 1]]`` ((C + 1)^2);
* components 1 .. K-1, each ``B`` alone (C^2), the same matrix for all of them.

The transform is orthogonal, so damping (``lam I``) and quadratic forms keep their values, and every
solve, Schur complement and cost of a merge splits over the components: O(C^3) work and no
(C K + 1)^2 matrix where the dense form took O((C K)^3).
"""
from __future__ import annotations

import numpy as np


def basis(k: int) -> np.ndarray:
    """(k, k) orthogonal, first column constant 1/sqrt(k)."""
    a = np.eye(k)
    a[:, 0] = 1.0
    q, _ = np.linalg.qr(a)
    return q * np.sign(q[0, 0])


def blocks(hc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A per-channel moment ``Hc`` (C + 1, C + 1) (bias last) -> ``(H0 (C + 1)^2, B (C, C))``."""
    c = hc.shape[0] - 1
    m_x, m_y = hc[:c, c], hc[c, :c]
    b = hc[:c, :c] - np.outer(m_x, m_y)
    h0 = np.empty_like(hc)
    h0[:c, :c] = b + k * np.outer(m_x, m_y)
    h0[:c, c] = np.sqrt(k) * m_x
    h0[c, :c] = np.sqrt(k) * hc[c, c] * m_y
    h0[c, c] = hc[c, c]
    return h0, b


def trace(h0: np.ndarray, b: np.ndarray, k: int) -> float:
    """The trace of the full (C K + 1)^2 statistic."""
    return float(np.trace(h0) + (k - 1) * np.trace(b))


def split(w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``w`` (n, C K + 1) in weight order, bias last -> component 0 with the bias (n, C + 1)
    and components 1 .. K-1 as (K - 1, n, C)."""
    n = w.shape[0]
    comps = w[:, :-1].reshape(n, -1, k) @ basis(k)  # (n, C, K)
    return np.concatenate([comps[:, :, 0], w[:, -1:]], axis=1), np.moveaxis(comps[:, :, 1:], 2, 0)


def join(w0: np.ndarray, rest: np.ndarray, k: int) -> np.ndarray:
    """The inverse of :func:`split`."""
    comps = np.concatenate([w0[:, :-1, None], np.moveaxis(rest, 0, 2)], axis=2)  # (n, C, K)
    n = comps.shape[0]
    return np.concatenate([(comps @ basis(k).T).reshape(n, -1), w0[:, -1:]], axis=1)
