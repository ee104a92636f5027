"""The offset basis of per-channel conv statistics (onnxzip/sharing/offsets.py) against dense
constructions by hand on small random arrays.

The oracle of every test is the full (C K + 1)^2 statistic built with numpy from its definition
(``H = kron(B, I_K) + u v'``, ONNX weight order: channel-major, offsets inner, bias last) and the
explicit change of basis ``T = blockdiag(kron(I_C, Q), 1)``; none of the module's functions is used
to build the expected values, except ``basis`` where its own defining properties are checked first.
"""
import numpy as np
import pytest

from onnxzip.sharing import offsets


def moment(rng, c: int, n: int = 50, cross: bool = False) -> np.ndarray:
    """A genuine per-channel moment ``mean([x 1][y 1]')`` (C + 1, C + 1), bias last; x = y unless
    ``cross`` (then an unsymmetric cross moment, as recovery uses)."""
    x = rng.normal(0.3, 1.0, (n, c))
    y = x + rng.normal(0, 0.5, (n, c)) if cross else x
    xa, ya = np.c_[x, np.ones(n)], np.c_[y, np.ones(n)]
    return xa.T @ ya / n


def dense(hc: np.ndarray, k: int) -> np.ndarray:
    """The full statistic by its definition: kron(Hc_cc - m_x m_y', I_K) + u v', with
    u = [m_x (x) 1_K; 1] and v = [m_y (x) 1_K; 1] (here Hc[c, c] = 1)."""
    c = hc.shape[0] - 1
    m_x, m_y = hc[:c, c], hc[c, :c]
    b = hc[:c, :c] - np.outer(m_x, m_y)
    h = np.zeros((c * k + 1, c * k + 1))
    for i in range(c):
        for j in range(c):
            for o in range(k):
                h[i * k + o, j * k + o] += b[i, j]
    u = np.r_[np.repeat(m_x, k), 1.0]
    v = np.r_[np.repeat(m_y, k), 1.0]
    return h + np.outer(u, v)


def change_of_basis(c: int, k: int) -> np.ndarray:
    """T with weight-order rows and component coordinates as columns (channel-major, component inner)."""
    t = np.zeros((c * k + 1, c * k + 1))
    t[:-1, :-1] = np.kron(np.eye(c), offsets.basis(k))
    t[-1, -1] = 1.0
    return t


@pytest.mark.parametrize("k", [1, 2, 3, 9, 25])
def test_basis_is_orthogonal_with_a_constant_first_column(k):
    q = offsets.basis(k)
    assert q.shape == (k, k)
    np.testing.assert_allclose(q.T @ q, np.eye(k), atol=1e-12)
    np.testing.assert_allclose(q @ q.T, np.eye(k), atol=1e-12)
    np.testing.assert_allclose(q[:, 0], np.full(k, 1 / np.sqrt(k)), atol=1e-12)  # + sign, not -
    if k > 1:  # every other component sums to zero over the offsets (orthogonal to the constant)
        np.testing.assert_allclose(q[:, 1:].sum(axis=0), np.zeros(k - 1), atol=1e-12)


@pytest.mark.parametrize("c, k, cross", [(3, 9, False), (4, 4, True), (2, 1, False), (5, 2, True)])
def test_blocks_are_the_dense_statistic_in_the_offset_basis(c, k, cross):
    rng = np.random.default_rng(c * 10 + k)
    hc = moment(rng, c, cross=cross)
    h = dense(hc, k)
    m = change_of_basis(c, k).T @ h @ change_of_basis(c, k)
    h0, b = offsets.blocks(hc, k)
    assert h0.shape == (c + 1, c + 1) and b.shape == (c, c)
    comp0 = [i * k for i in range(c)] + [c * k]
    np.testing.assert_allclose(h0, m[np.ix_(comp0, comp0)], rtol=1e-12, atol=1e-12)
    for j in range(1, k):
        cj = [i * k + j for i in range(c)]
        np.testing.assert_allclose(b, m[np.ix_(cj, cj)], rtol=1e-12, atol=1e-12)
    # every entry between two different components (or component j > 0 and the bias) is zero
    comp = np.r_[np.tile(np.arange(k), c), 0]
    off = comp[:, None] != comp[None, :]
    assert np.max(np.abs(m[off]), initial=0.0) < 1e-12
    # and the docstring's closed form of H0
    m_x, m_y = hc[:c, c], hc[c, :c]
    b_ref = hc[:c, :c] - np.outer(m_x, m_y)
    np.testing.assert_allclose(b, b_ref, atol=1e-14)
    expected = np.block([[b_ref + k * np.outer(m_x, m_y), np.sqrt(k) * m_x[:, None]],
                         [np.sqrt(k) * m_y[None, :], np.ones((1, 1))]])
    np.testing.assert_allclose(h0, expected, atol=1e-12)


def test_blocks_of_a_known_small_moment():
    """C = 1, K = 4, x always 2: Hc = [[4, 2], [2, 1]], B = 0, H0 = [[0 + 4*4, 2*2], [2*2, 1]]."""
    h0, b = offsets.blocks(np.array([[4.0, 2.0], [2.0, 1.0]]), 4)
    np.testing.assert_allclose(b, [[0.0]], atol=1e-15)
    np.testing.assert_allclose(h0, [[16.0, 4.0], [4.0, 1.0]], atol=1e-12)


@pytest.mark.parametrize("c, k", [(3, 9), (1, 4), (6, 2), (4, 1)])
def test_trace_is_the_dense_trace(c, k):
    hc = moment(np.random.default_rng(k), c, cross=True)
    h0, b = offsets.blocks(hc, k)
    assert offsets.trace(h0, b, k) == pytest.approx(np.trace(dense(hc, k)), rel=1e-12)
    # and by hand: K tr(B) + K |m|^2 terms + 1 = K tr(Hc_cc) + 1 (the x-offsets each see Hc_cc's diagonal)
    assert offsets.trace(h0, b, k) == pytest.approx(k * np.trace(hc[:c, :c]) + 1.0, rel=1e-12)


@pytest.mark.parametrize("n, c, k", [(5, 3, 9), (1, 2, 4), (4, 1, 3), (3, 4, 1)])
def test_split_gives_the_coordinates_in_the_offset_basis(n, c, k):
    rng = np.random.default_rng(n + c + k)
    w = rng.normal(size=(n, c * k + 1))
    w0, rest = offsets.split(w, k)
    assert w0.shape == (n, c + 1) and rest.shape == (k - 1, n, c)
    coords = w @ change_of_basis(c, k)  # row vectors: new coordinates = w T
    np.testing.assert_allclose(w0[:, :c], coords[:, [i * k for i in range(c)]], atol=1e-12)
    np.testing.assert_array_equal(w0[:, c], w[:, -1])  # the bias unchanged, last
    for j in range(1, k):
        np.testing.assert_allclose(rest[j - 1], coords[:, [i * k + j for i in range(c)]], atol=1e-12)
    # component 0 is the kernel's mean times sqrt(K): a 3x3 kernel of all ones has only that
    ones = np.r_[np.ones(c * k), 0.0][None]
    o0, orest = offsets.split(ones, k)
    np.testing.assert_allclose(o0, np.r_[np.full(c, np.sqrt(k)), 0.0][None], atol=1e-12)
    assert np.max(np.abs(orest), initial=0.0) < 1e-12


@pytest.mark.parametrize("n, c, k", [(5, 3, 9), (2, 6, 4), (3, 4, 1)])
def test_split_join_round_trip(n, c, k):
    rng = np.random.default_rng(7 * n + k)
    w = rng.normal(size=(n, c * k + 1))
    np.testing.assert_allclose(offsets.join(*offsets.split(w, k), k), w, atol=1e-12)
    w0, rest = rng.normal(size=(n, c + 1)), rng.normal(size=(k - 1, n, c))
    back0, back_rest = offsets.split(offsets.join(w0, rest, k), k)
    np.testing.assert_allclose(back0, w0, atol=1e-12)
    np.testing.assert_allclose(back_rest, rest, atol=1e-12)


@pytest.mark.parametrize("c, k, cross", [(3, 9, False), (2, 4, True)])
def test_quadratic_forms_and_solves_split_over_the_components(c, k, cross):
    """w H w' and the solution of (H + lam I) x = g, computed densely, equal their block forms
    (the merge's costs and solves are worked block by block)."""
    rng = np.random.default_rng(3)
    hc = moment(rng, c, cross=cross)
    h, lam = dense(hc, k), 0.1
    h0, b = offsets.blocks(hc, k)
    w = rng.normal(size=(4, c * k + 1))
    w0, rest = offsets.split(w, k)
    full = np.einsum("ni,ij,nj->n", w, h, w)
    split = np.einsum("ni,ij,nj->n", w0, h0, w0) + np.einsum("jni,ik,jnk->n", rest, b, rest)
    np.testing.assert_allclose(split, full, rtol=1e-10)
    g = rng.normal(size=(4, c * k + 1))  # right-hand sides as rows: x (H + lam I) = g
    x_dense = np.linalg.solve((h + lam * np.eye(c * k + 1)).T, g.T).T
    g0, grest = offsets.split(g, k)
    x0 = np.linalg.solve((h0 + lam * np.eye(c + 1)).T, g0.T).T
    xrest = np.stack([np.linalg.solve((b + lam * np.eye(c)).T, r.T).T for r in grest])
    np.testing.assert_allclose(offsets.join(x0, xrest, k), x_dense, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("k", [4, 9])
def test_blocks_agree_with_the_dense_expansion_the_merge_uses_elsewhere(k):
    """The dense path (stats.expand_conv_hessian) and the offset path must describe the same statistic,
    also for an unnormalized moment (a weighted sum: Hc[c, c] = 2.5, not 1)."""
    from onnxzip.calibrate.stats import expand_conv_hessian
    c = 3
    hc = 2.5 * moment(np.random.default_rng(k), c, cross=True)
    m = change_of_basis(c, k).T @ expand_conv_hessian(hc, k) @ change_of_basis(c, k)
    h0, b = offsets.blocks(hc, k)
    comp0 = [i * k for i in range(c)] + [c * k]
    np.testing.assert_allclose(h0, m[np.ix_(comp0, comp0)], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b, m[np.ix_([i * k + 1 for i in range(c)], [i * k + 1 for i in range(c)])],
                               rtol=1e-12, atol=1e-12)
    assert offsets.trace(h0, b, k) == pytest.approx(np.trace(expand_conv_hessian(hc, k)), rel=1e-12)
