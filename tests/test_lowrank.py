"""Wide layers' low-rank statistics against the same algebra on dense matrices."""
import numpy as np
import pytest

from onnxzip.sharing.problem import refit
from onnxzip.sharing.lowrank import LowRank, basis, solve, wide_blocks, woodbury_refit
from onnxzip.sharing.merge import damp, damping_of, merge_rows, pair_costs, schur, split_costs


def _rows(rng, n, d):
    x = rng.normal(size=(n, d - 1)) + rng.normal(size=d - 1)
    return np.hstack([x, np.ones((n, 1))])


def test_low_rank_algebra_equals_dense():
    rng = np.random.default_rng(0)
    p = basis(rng.normal(size=(5, 12)))
    a = LowRank(0.3, p, (lambda m: m @ m.T)(rng.normal(size=(5, 5))))
    b = LowRank(0.7, p, (lambda m: m @ m.T)(rng.normal(size=(5, 5))))
    x = rng.normal(size=(12, 4))
    da, db = a.dense(), b.dense()
    np.testing.assert_allclose((a + b).dense(), da + db, atol=1e-12)
    np.testing.assert_allclose((a @ b).dense(), da @ db, atol=1e-11)
    np.testing.assert_allclose(a @ x, da @ x, atol=1e-12)
    np.testing.assert_allclose(x.T @ a, x.T @ da, atol=1e-12)
    np.testing.assert_allclose(a.inverse().dense(), np.linalg.inv(da), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(solve(a, x), np.linalg.solve(da, x), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose((sum([a, b]) / 2).dense(), (da + db) / 2, atol=1e-12)


@pytest.mark.parametrize("compensate", [True, False])
def test_wide_blocks_equal_the_schur_complement_of_the_dense_hessian(compensate):
    rng = np.random.default_rng(1)
    n, d, ns = 7, 20, 9
    rows = [_rows(rng, n, d) for _ in range(2)]
    lams = [damping_of(r.T @ r / n, 0.01) for r in rows]
    shared = basis(*[r[:, :ns] for r in rows])
    for r, lam in zip(rows, lams):
        s, g = wide_blocks(r, lam, ns, shared, compensate)
        h = r.T @ r / n + lam * np.eye(d)
        if compensate:
            s_ref, g_ref = schur(h, ns)
            np.testing.assert_allclose(g @ np.eye(ns), g_ref, rtol=1e-8, atol=1e-10)
        else:
            s_ref = h[:ns, :ns]
        np.testing.assert_allclose(s.dense(), s_ref, rtol=1e-8, atol=1e-10)
    # the merge and the pair costs on low-rank blocks equal the dense ones
    a, b = rng.normal(size=(4, d)), rng.normal(size=(5, d))
    blocks = [wide_blocks(r, lam, ns, shared) for r, lam in zip(rows, lams)]
    dense = [schur(r.T @ r / n + lam * np.eye(d), ns) for r, lam in zip(rows, lams)]
    np.testing.assert_allclose(pair_costs(a[:, :ns], b[:, :ns], blocks[0][0], blocks[1][0]),
                               pair_costs(a[:, :ns], b[:, :ns], dense[0][0], dense[1][0]), rtol=1e-7, atol=1e-10)
    for got, want in zip(split_costs(a[:, :ns], b[:, :ns], blocks[0][0], blocks[1][0]),
                         split_costs(a[:, :ns], b[:, :ns], dense[0][0], dense[1][0])):
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-10)
    hs = [r.T @ r / n + lam * np.eye(d) for r, lam in zip(rows, lams)]
    w, privs, costs = merge_rows([a[:4], b[:4]], hs, ns, blocks=blocks)
    w_ref, privs_ref, costs_ref = merge_rows([a[:4], b[:4]], hs, ns)
    np.testing.assert_allclose(w, w_ref, rtol=1e-7, atol=1e-9)
    for p, q in zip(privs, privs_ref):
        np.testing.assert_allclose(p, q, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(costs, costs_ref, rtol=1e-7)


def test_woodbury_refit_equals_the_dense_refit():
    rng = np.random.default_rng(2)
    n, d = 6, 15
    r, q = _rows(rng, n, d), _rows(rng, n, d)
    a = rng.normal(size=(3, d))
    h = r.T @ r / n
    lam = damping_of(h, 0.01)
    np.testing.assert_allclose(woodbury_refit(r, q, a, lam), refit(a, damp(h, 0.01), r.T @ q / n, lam),
                               rtol=1e-7, atol=1e-9)


def test_a_wide_dense_layer_zips_as_with_its_dense_hessian(monkeypatch):
    """The sample MLP seen on 40 samples (fewer than its 64 inputs): the low-rank path must give
    the zip the dense path gives (float32 products there: agreement to about 1e-5)."""
    import onnxzip.sharing.problem
    from onnxzip import zip_models
    from onnxzip.graph.io import load_arrays
    from tests.conftest import SAMPLES
    models = [SAMPLES / "mlp_digit.onnx", SAMPLES / "mlp_parity.onnx"]
    data = [{"image": load_arrays(SAMPLES / f"calib_{t}.npz")["image"][:40]} for t in ("digit", "parity")]
    dense = zip_models(models, data, share=0.5, quiet=True, hold_out=0)
    monkeypatch.setattr(onnxzip.sharing.problem, "LOWRANK_MIN", 32)
    wide = zip_models(models, data, share=0.5, quiet=True, hold_out=0)
    assert [r["shared"] for r in wide.report["layers"]] == [r["shared"] for r in dense.report["layers"]]
    for a, b in zip(dense.model.graph.initializer, wide.model.graph.initializer):
        x, y = (np.frombuffer(t.raw_data, np.float32) if t.raw_data else np.asarray(t.float_data) for t in (a, b))
        np.testing.assert_allclose(y, x, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(x).max()))
    for t_d, t_w in zip(dense.report["tasks"], wide.report["tasks"]):
        assert t_w["rel_err"] == pytest.approx(t_d["rel_err"], rel=1e-3)


def test_tasks_with_different_sample_counts_take_one_path(monkeypatch):
    """Whether a layer is wide is decided once, from the fewest samples (here 40 < 65 inputs + bias
    for one task, 100 for the other)."""
    import onnxzip.sharing.problem
    from onnxzip import zip_models
    from onnxzip.graph.io import load_arrays
    from tests.conftest import SAMPLES
    monkeypatch.setattr(onnxzip.sharing.problem, "LOWRANK_MIN", 32)
    models = [SAMPLES / "mlp_digit.onnx", SAMPLES / "mlp_parity.onnx"]
    data = [{"image": load_arrays(SAMPLES / f"calib_{t}.npz")["image"][:n]} for t, n in (("digit", 40), ("parity", 100))]
    result = zip_models(models, data, share=0.5, quiet=True, hold_out=0)
    assert result.report["equivalence"]["verdict"] == "ok"
    assert all(t["rel_err"] < 0.05 for t in result.report["tasks"])
