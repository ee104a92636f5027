"""The layer loop's own math: the recovery refit against a numeric least-squares solve."""
import numpy as np

from onnxzip.zipper import refit


def test_refit_is_the_regularized_least_squares_solution_toward_the_original_row():
    rng = np.random.default_rng(0)
    n, d = 200, 6
    x = np.hstack([rng.normal(size=(n, d - 1)), np.ones((n, 1))])  # zipped inputs, bias column last
    x_ref = x + 0.3 * rng.normal(size=(n, d)) * np.r_[np.ones(d - 1), 0]  # the original network's inputs
    a = rng.normal(size=(3, d))
    lam = 0.05
    h = x.T @ x / n + lam * np.eye(d)
    g = x.T @ x_ref / n
    got = refit(a, h, g, lam)
    for row, w in zip(a, got):  # oracle: min |X w - X_ref a|^2 / n + lam |w - a|^2, stacked as one lstsq
        lhs = np.vstack([x / np.sqrt(n), np.sqrt(lam) * np.eye(d)])
        rhs = np.concatenate([x_ref @ row / np.sqrt(n), np.sqrt(lam) * row])
        np.testing.assert_allclose(w, np.linalg.lstsq(lhs, rhs, rcond=None)[0], atol=1e-10)


def test_refit_keeps_a_row_whose_input_did_not_change():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4))
    h0 = x.T @ x / 50
    a = rng.normal(size=(2, 4))
    np.testing.assert_allclose(refit(a, h0 + 0.1 * np.eye(4), h0, 0.1), a, atol=1e-12)  # no shrinkage
