"""Hessians of wide layers, kept as damping plus low rank (pure numpy).

A dense layer with d inputs seen on n < d samples has the statistic ``H = R'R / n`` (R: the n input
rows with the bias 1 appended) of rank at most n; damped, ``H + lam I``. Its blocks, Schur
complements, sums, products and inverses over one task or several all have the form

    S = lam I + P K P'

with P (d, r) an orthonormal basis shared by every task's matrix (the span of all tasks' rows)
and K (r, r): the isotropic part lam I acts on the rest of the space. :class:`LowRank` holds such a
matrix and does the algebra :mod:`onnxzip.sharing.merge` needs (``+``, ``@`` with dense matrices and with
each other, ``.T``, :func:`solve`) without a d x d array: the VGG-16 fc6 (25,088 inputs) pair costs
and merges in r <= 2n dimensions.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve

from ..errors import NumericalError


class LowRank:
    """``lam I + P K P'`` of size (d, d); ``P`` (d, r) orthonormal columns, ``K`` (r, r)."""

    __array_ufunc__ = None  # ndarray @ LowRank defers to __rmatmul__

    def __init__(self, lam: float, basis: np.ndarray, core: np.ndarray) -> None:
        self.lam, self.P, self.K = float(lam), basis, core

    @property
    def shape(self) -> tuple[int, int]:
        return (self.P.shape[0], self.P.shape[0])

    @property
    def T(self) -> "LowRank":
        return LowRank(self.lam, self.P, self.K.T)

    def _same_basis(self, other: "LowRank") -> None:
        if other.P is not self.P:
            raise ValueError("low-rank matrices over different bases")

    def __add__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return self
        self._same_basis(other)
        return LowRank(self.lam + other.lam, self.P, self.K + other.K)

    __radd__ = __add__

    def __truediv__(self, c: float) -> "LowRank":
        return LowRank(self.lam / c, self.P, self.K / c)

    def __mul__(self, c: float) -> "LowRank":
        return LowRank(self.lam * c, self.P, self.K * c)

    __rmul__ = __mul__

    def __matmul__(self, other):
        if isinstance(other, LowRank):
            self._same_basis(other)
            return LowRank(self.lam * other.lam, self.P, self.lam * other.K + other.lam * self.K + self.K @ other.K)
        x = np.asarray(other)  # (d, m)
        return self.lam * x + self.P @ (self.K @ (self.P.T @ x))

    def __rmatmul__(self, other):
        x = np.asarray(other)  # (m, d)
        return self.lam * x + ((x @ self.P) @ self.K) @ self.P.T

    def inverse(self) -> "LowRank":
        """``(lam I + P K P')^-1 = I / lam + P ((lam I + K)^-1 - I / lam) P'``."""
        if self.lam <= 0:
            raise NumericalError("a low-rank Hessian without damping cannot be inverted; raise --damping")
        eye = np.eye(self.K.shape[0])
        try:
            inner = cho_solve(cho_factor(self.lam * eye + (self.K + self.K.T) / 2), eye)
        except LinAlgError:
            raise NumericalError("a Hessian is not positive definite after damping; raise --damping") from None
        return LowRank(1.0 / self.lam, self.P, inner - eye / self.lam)

    def dense(self) -> np.ndarray:
        """The (d, d) matrix (for tests and small cases)."""
        return self.lam * np.eye(self.shape[0]) + self.P @ self.K @ self.P.T


class Factored:
    """A (p, q) matrix kept as ``L @ M @ R`` (L (p, r), M (r, s), R (s, q)); ``x @ F`` and ``F.T``."""

    def __init__(self, left: np.ndarray, mid: np.ndarray, right: np.ndarray) -> None:
        self.L, self.M, self.R = left, mid, right

    @property
    def shape(self) -> tuple[int, int]:
        return (self.L.shape[0], self.R.shape[1])

    @property
    def T(self) -> "Factored":
        return Factored(self.R.T, self.M.T, self.L.T)

    __array_ufunc__ = None

    def __rmatmul__(self, other):
        return ((np.asarray(other) @ self.L) @ self.M) @ self.R

    def __matmul__(self, other):
        return self.L @ (self.M @ (self.R @ np.asarray(other)))


def solve(a, b):
    """``a^-1 b`` for a dense positive definite matrix (Cholesky) or a :class:`LowRank` one."""
    if isinstance(a, LowRank):
        return a.inverse() @ b
    try:
        return cho_solve(cho_factor(a), b)
    except LinAlgError:
        raise NumericalError("a Hessian is not positive definite after damping; raise --damping") from None


def basis(*rows: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """An orthonormal basis (d, r) of the span of the rows of every (n_i, d) array given."""
    stacked = np.concatenate([np.asarray(r, np.float64) for r in rows]).T  # (d, sum n_i)
    u, sv, _ = np.linalg.svd(stacked, full_matrices=False)  # (QR without pivoting is not rank-revealing)
    return u[:, sv > tol * max(float(sv.max(initial=0.0)), 1e-300)]


def wide_blocks(rows: np.ndarray, lam: float, ns: int, basis_s: np.ndarray, compensate: bool = True
                ) -> tuple[LowRank, Factored]:
    """:func:`onnxzip.sharing.merge.task_blocks` of ``H = rows' rows / n + lam I`` without forming H.

    Args:
        rows: (n, d) the task's input rows (bias column included), columns in zipped order.
        lam: the damping; ns: the shared columns (first); basis_s: (ns, r) a basis holding the
            shared part of every task's rows.
    Returns:
        S = H_ss - H_sp H_pp^-1 H_ps = lam I + R_s' (n I + R_p R_p' / lam)^-1 R_s, and the
        compensation map H_pp^-1 H_ps = R_p' (n lam I + R_p R_p')^-1 R_s, (d - ns, ns), factored.
        With ``compensate=False``: S = H_ss and no compensation (the paper's rule).
    """
    n = rows.shape[0]
    r_s, r_p = rows[:, :ns], rows[:, ns:]
    y = r_s @ basis_s  # (n, r): the shared rows in the basis
    if not compensate or r_p.shape[1] == 0:
        core = y.T @ y / n
        return LowRank(lam, basis_s, core), Factored(np.zeros((r_p.shape[1], 0)), np.zeros((0, 0)), np.zeros((0, ns)))
    gram = r_p @ r_p.T  # (n, n)
    inner = np.linalg.inv(n * np.eye(n) + gram / lam)
    core = y.T @ ((inner + inner.T) / 2) @ y
    comp = np.linalg.inv(n * lam * np.eye(n) + gram)
    return LowRank(lam, basis_s, core), Factored(r_p.T, comp, r_s)


def woodbury_refit(rows: np.ndarray, ref_rows: np.ndarray, a: np.ndarray, lam: float) -> np.ndarray:
    """:func:`onnxzip.sharing.problem.refit` for a wide layer: ``(H + lam I)^-1 (G a' + lam a')``, transposed,
    with H = R'R/n, G = R'Q/n (R, Q: (n, d) rows of the zipped and the original input), never
    forming a d x d matrix. a: (m, d) rows to refit."""
    n = rows.shape[0]
    v = rows.T @ (ref_rows @ a.T) / n + lam * a.T  # (d, m)
    small = np.linalg.solve(n * lam * np.eye(n) + rows @ rows.T, rows @ v)  # (n, m)
    return ((v - rows.T @ small) / lam).T
