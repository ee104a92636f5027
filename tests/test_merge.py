import itertools

import numpy as np
import pytest

from onnxzip.merge import MATCHERS, damp, match_greedy, match_optimal, pair_costs, schur, zip_layer


def spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or 2 * d))
    return a @ a.T / a.shape[1] + 1e-3 * np.eye(d)


def objective(w_a, w_b, a, b, h_a, h_b):
    return 0.5 * (w_a - a) @ h_a @ (w_a - a) + 0.5 * (w_b - b) @ h_b @ (w_b - b)


@pytest.mark.parametrize("ns", [7, 4, 1])
def test_merged_weights_minimise_the_two_task_quadratic(ns):
    rng = np.random.default_rng(0)
    d = 7
    h_a, h_b = spd(rng, d), spd(rng, d)
    a, b = rng.normal(size=(5, d)), rng.normal(size=(5, d))
    m = zip_layer(a, b, h_a, h_b, ns, 5)
    for i in range(5):
        ai, bi = a[m.ia[i]], b[m.ib[i]]
        # numeric solve of the stationarity system over z = [w_s, p_a, p_b]
        dp = d - ns
        sel_a = np.zeros((d, ns + 2 * dp)); sel_a[:ns, :ns] = np.eye(ns); sel_a[ns:, ns:ns + dp] = np.eye(dp)
        sel_b = np.zeros((d, ns + 2 * dp)); sel_b[:ns, :ns] = np.eye(ns); sel_b[ns:, ns + dp:] = np.eye(dp)
        lhs = sel_a.T @ h_a @ sel_a + sel_b.T @ h_b @ sel_b
        z = np.linalg.solve(lhs, sel_a.T @ h_a @ ai + sel_b.T @ h_b @ bi)
        np.testing.assert_allclose(m.shared[i], z[:ns], atol=1e-9)
        np.testing.assert_allclose(m.private_a[i], z[ns:ns + dp], atol=1e-9)
        np.testing.assert_allclose(m.private_b[i], z[ns + dp:], atol=1e-9)
        w_a = np.concatenate([m.shared[i], m.private_a[i]])
        w_b = np.concatenate([m.shared[i], m.private_b[i]])
        # the cost is the quadratic's value at the optimum
        assert objective(w_a, w_b, ai, bi, h_a, h_b) == pytest.approx(m.costs[i], rel=1e-9, abs=1e-12)
        # and any perturbation is worse
        for _ in range(5):
            e = rng.normal(size=d) * 1e-2
            e_b = e.copy(); e_b[ns:] = rng.normal(size=d - ns) * 1e-2
            assert objective(w_a + e, w_b + e_b, ai, bi, h_a, h_b) > m.costs[i]


def test_cost_matrix_equals_quadratic_minimum_for_every_pair():
    rng = np.random.default_rng(1)
    d, ns = 6, 4
    h_a, h_b = spd(rng, d), spd(rng, d)
    a, b = rng.normal(size=(4, d)), rng.normal(size=(3, d))
    s_a, _ = schur(h_a, ns)
    s_b, _ = schur(h_b, ns)
    c = pair_costs(a[:, :ns], b[:, :ns], s_a, s_b)
    for i, j in itertools.product(range(4), range(3)):
        m = zip_layer(a[i:i + 1], b[j:j + 1], h_a, h_b, ns, 1)
        assert c[i, j] == pytest.approx(m.costs[0], rel=1e-9)


def test_m_form_equals_inverse_sum_when_both_invert():
    rng = np.random.default_rng(2)
    d = 5
    h_a, h_b = spd(rng, d), spd(rng, d)
    a, b = rng.normal(size=(3, d)), rng.normal(size=(3, d))
    m_inv = np.linalg.inv(np.linalg.inv(h_a) + np.linalg.inv(h_b))
    c = pair_costs(a, b, h_a, h_b)
    for i, j in itertools.product(range(3), range(3)):
        v = a[i] - b[j]
        assert c[i, j] == pytest.approx(0.5 * v @ m_inv @ v, rel=1e-9)


def test_optimal_matching_is_exact_and_never_worse_than_greedy():
    rng = np.random.default_rng(3)
    for trial in range(30):
        na, nb = rng.integers(2, 6, size=2)
        c = rng.random((na, nb)) ** 3
        for k in range(0, min(na, nb) + 1):
            ia, ib = match_optimal(c, k)
            ga, gb = match_greedy(c, k)
            assert len(ia) == len(ga) == k
            assert len(set(ia)) == k and len(set(ib)) == k
            best = min((sum(c[i, j] for i, j in zip(rows, cols))
                        for rows in itertools.permutations(range(na), k)
                        for cols in itertools.combinations(range(nb), k)), default=0.0)
            assert c[ia, ib].sum() == pytest.approx(best, abs=1e-12)
            assert c[ia, ib].sum() <= c[ga, gb].sum() + 1e-12


def test_identity_hessian_is_euclidean_matching_and_averaging():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    m = zip_layer(a, b, np.eye(3), np.eye(3), 3, 4)
    np.testing.assert_allclose(m.shared, (a[m.ia] + b[m.ib]) / 2)
    np.testing.assert_allclose(m.costs, 0.25 * ((a[m.ia] - b[m.ib]) ** 2).sum(1))


def test_dead_inputs_give_finite_results_after_damping():
    rng = np.random.default_rng(5)
    h = spd(rng, 5)
    h[1, :] = h[:, 1] = 0.0  # an input channel that is always zero
    h[3, :] = h[:, 3] = 0.0
    a, b = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    m = zip_layer(a, b, damp(h, 1e-2), damp(h, 1e-2), 3, 2)
    assert np.isfinite(m.shared).all() and np.isfinite(m.private_a).all() and np.isfinite(m.costs).all()


def test_matchers_registry():
    assert MATCHERS.names() == ["greedy", "index", "optimal"]
    from onnxzip.errors import UsageError
    with pytest.raises(UsageError, match="greedy, index, optimal"):
        MATCHERS.get("hungarian")


def test_split_costs_add_up_to_the_pair_cost():
    from onnxzip.merge import split_costs
    rng = np.random.default_rng(8)
    d = 6
    h_a, h_b = spd(rng, d), spd(rng, d)
    a, b = rng.normal(size=(4, d)), rng.normal(size=(5, d))
    e_a, e_b = split_costs(a, b, h_a, h_b)
    np.testing.assert_allclose(e_a + e_b, pair_costs(a, b, h_a, h_b), rtol=1e-9, atol=1e-12)
    m = zip_layer(a[:1], b[:1], h_a, h_b, d, 1)  # and E_A is task A's own error at the merged optimum
    diff = m.shared[0] - a[0]
    assert e_a[0, 0] == pytest.approx(0.5 * diff @ h_a @ diff, rel=1e-9)


def test_loss_weights_steer_the_matching():
    from onnxzip.merge import match_tasks
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    s = [np.eye(4), np.eye(4)]
    plain, _ = match_tasks([([a, b], s)], 1, "optimal", [0, 1])
    f = [np.ones(3), np.ones(3)]
    f[0][plain[0][0]] = 1e6  # the neuron the plain matching shares is now very costly to move
    weighted, _ = match_tasks([([a, b], s, f)], 1, "optimal", [0, 1])
    assert weighted[0][0] != plain[0][0]
