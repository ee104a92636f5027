"""Per-task channel affine (``--affine``): the closed form against least squares on the samples, and
zips that carry it, checked against the originals in ONNX Runtime."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxzip import zip_models
from onnxzip.sharing.affine import MIN_SCALE, apply_affine, fit_affine

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def inputs(n=400, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 2, size=d) + rng.normal(size=d)
    return np.hstack([x, np.ones((n, 1))])  # the bias 1 last


def test_the_closed_form_is_least_squares_on_the_samples():
    """a, b against numpy's lstsq of the target pre-activation on [u, 1] over the samples, for the
    moment form and the rows form (a wide layer's statistic)."""
    x = inputs()
    rng = np.random.default_rng(1)
    z = rng.normal(size=(5, 7))
    m = z * rng.uniform(-2, 2, size=(5, 1)) + 0.5 * rng.normal(size=(5, 7))  # (related rows: scales well above 0.1)
    want = np.array([np.linalg.lstsq(np.stack([x @ zr, np.ones(len(x))], 1), x @ mr, rcond=None)[0]
                     for zr, mr in zip(z, m)])
    assert (np.abs(want[:, 0]) >= MIN_SCALE).all()
    for got in (fit_affine(x.T @ x / len(x), None, z, m, 6), fit_affine(None, x, z, m, 6)):
        np.testing.assert_allclose(np.stack(got, 1), want, rtol=1e-9, atol=1e-12)


def test_a_row_that_is_its_target_up_to_scale_and_shift_is_recovered_exactly():
    x = inputs()
    z = np.random.default_rng(2).normal(size=(3, 7))
    m = apply_affine(z, np.array([2.0, -0.5, 0.3]), np.array([0.1, 1.0, -2.0]), 6)
    a, b = fit_affine(x.T @ x / len(x), None, z, m, 6)
    np.testing.assert_allclose(a, [2.0, -0.5, 0.3], rtol=1e-9)
    np.testing.assert_allclose(b, [0.1, 1.0, -2.0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(apply_affine(z, a, b, 6), m, rtol=1e-9, atol=1e-12)


def test_a_scale_too_small_is_not_kept_and_the_row_gets_its_best_shift():
    x = inputs()
    z = np.random.default_rng(3).normal(size=(1, 7))
    m = apply_affine(z, np.array([0.01]), np.array([0.5]), 6)
    a, b = fit_affine(x.T @ x / len(x), None, z, m, 6)
    assert a[0] == 1.0
    assert b[0] == pytest.approx(np.mean(x @ m[0]) - np.mean(x @ z[0]))


def floats(model: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(i).size for i in model.graph.initializer
               if numpy_helper.to_array(i).dtype.kind == "f")


def sample_pair(arch):
    models = [str(SAMPLES / f"{arch}_{t}.onnx") for t in ("digit", "parity")]
    return models, [dict(np.load(SAMPLES / f"calib_{t}.npz")) for t in ("digit", "parity")]


@pytest.mark.parametrize("favor", ["size", "speed"])
def test_the_sample_mlp_fully_shared_with_affine_measures_closer_to_its_originals(favor):
    """The zip checks itself (the emitted Mul/Add against the plan, the merge check); each task's
    held-out loss is below the zip without the affine, and the graph stores two numbers per shared
    neuron and task more."""
    models, data = sample_pair("mlp")
    plain = zip_models(models, data, quiet=True, share=1.0, favor=favor)
    tuned = zip_models(models, data, quiet=True, share=1.0, favor=favor, affine=True)
    for p, t in zip(plain.report["tasks"], tuned.report["tasks"]):
        assert t["loss_increase"] < p["loss_increase"]
    shared = sum(row["shared"] for row in tuned.report["layers"])
    assert floats(tuned.model) - floats(plain.model) == 2 * 2 * shared
    assert tuned.report["params_after"] - plain.report["params_after"] == 2 * 2 * shared
