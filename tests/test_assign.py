"""The k-pair matchers against independent oracles: brute force on tiny matrices, and scipy's dense
assignment (with dummies) on large ones."""
import itertools

import numpy as np
import pytest

from onnxzip.sharing import assign
from onnxzip.sharing.assign import BOUNDED, CERTIFIED, GAP, match_certified, match_dense, match_optimal
from onnxzip.sharing.merge import pair_costs


def hessian_costs(rng, na, nb, d):
    """Pair costs of the merge's form: two sets of neurons under positive definite Hessians."""
    x = rng.normal(size=(3 * d, d))
    s = x.T @ x / (3 * d) + 1e-3 * np.eye(d)
    return pair_costs(rng.normal(size=(na, d)), rng.normal(size=(nb, d)), s, 1.5 * s)


def assert_proved(total, best, method):
    """The pairs' total against the oracle's optimum: equal where certified, within GAP where bounded."""
    assert total >= best * (1 - 1e-9)
    assert total <= best * (1 + (1e-7 if method == CERTIFIED else GAP)), method


def loss_weighted_costs(rng, n, d):
    """Costs as the loss-aware merge makes them: each side's share weighted by its neuron's loss
    weight, spread over orders of magnitude (every row's cheapest pairs on the same few columns)."""
    c = hessian_costs(rng, n, n, d)
    return c * (10 ** rng.uniform(-3, 0, n))[:, None] + c * (10 ** rng.uniform(-3, 0, n))[None, :]


def test_loss_weighted_costs_are_proved_too():
    c = loss_weighted_costs(np.random.default_rng(9), 400, 40)
    ia, ib = match_dense(c, 200)
    pairs = match_certified(c, 200, rounds=12, seconds=600)
    assert pairs is not None
    assert_proved(c[pairs.ia, pairs.ib].sum(), c[ia, ib].sum(), pairs.method)


def test_certified_pairs_equal_brute_force_on_tiny_matrices():
    rng = np.random.default_rng(0)
    for trial in range(12):
        na, nb = rng.integers(3, 6, size=2)
        c = rng.random((na, nb)) ** 2 + 0.01
        for k in range(1, min(na, nb)):
            pairs = match_certified(c, k, candidates=1)
            assert pairs is not None
            best = min(sum(c[i, j] for i, j in zip(rows, cols))
                       for rows in itertools.permutations(range(na), k) for cols in itertools.combinations(range(nb), k))
            assert len(set(pairs.ia)) == len(set(pairs.ib)) == k
            assert_proved(c[pairs.ia, pairs.ib].sum(), best, pairs.method)


@pytest.mark.parametrize("na, nb, k", [(300, 300, 150), (300, 360, 40), (360, 300, 290)])
def test_certified_pairs_equal_the_dense_assignment(na, nb, k):
    c = hessian_costs(np.random.default_rng(na + k), na, nb, 40)
    ia, ib = match_dense(c, k)
    for candidates in (1, 4, 16):  # one candidate each: the duals must add the missing pairs
        pairs = match_certified(c, k, candidates=candidates, rounds=8, seconds=600)
        assert pairs is not None
        assert len(set(pairs.ia)) == len(set(pairs.ib)) == k
        assert_proved(c[pairs.ia, pairs.ib].sum(), c[ia, ib].sum(), pairs.method)


def test_large_matrices_take_the_sparse_program_and_fall_back_when_uncertified(monkeypatch):
    monkeypatch.setattr(assign, "SECONDS", 600.0)  # (a loaded machine must not make it fall back)
    monkeypatch.setattr(assign, "SPARSE_FROM", 500)  # (the real threshold's dense oracle takes a minute)
    rng = np.random.default_rng(5)
    n = assign.SPARSE_FROM
    c = hessian_costs(rng, n, n + 40, 48)
    ia, ib = match_dense(c, n // 2)
    pairs = match_optimal(c, n // 2)
    assert pairs.method in (CERTIFIED, BOUNDED)
    assert_proved(c[pairs.ia, pairs.ib].sum(), c[ia, ib].sum(), pairs.method)
    monkeypatch.setattr(assign, "match_certified", lambda *args: None)
    pairs = match_optimal(c, n // 2)
    assert "did not certify" in pairs.method
    assert c[pairs.ia, pairs.ib].sum() == pytest.approx(c[ia, ib].sum(), rel=1e-12)
    assert match_optimal(c[:100, :100], 50).method == assign.DENSE
