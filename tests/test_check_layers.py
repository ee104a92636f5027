"""The independent merge check: layer errors measured in ORT against the merge's prediction."""
import numpy as np
import pytest
from conftest import SAMPLES

from onnxzip import zip_models
from onnxzip.errors import EquivalenceError

NAMES = ("digit", "parity")
CALIB = [SAMPLES / "calib_digit.npz", SAMPLES / "calib_parity.npz"]
CNN = [SAMPLES / f"cnn_{t}.onnx" for t in NAMES]


def test_first_layer_error_is_predicted_exactly_and_later_ones_are_reported():
    result = zip_models(CNN, CALIB, share=0.5, names=NAMES, quiet=True)
    first, *rest = result.report["layers"]
    err = first["error"]
    assert err["exact"] and first["shared"] == 8
    np.testing.assert_allclose(err["measured"], err["predicted"], rtol=1e-5)
    assert all(m > 0 for m in err["measured"]) and all(s > m for s, m in zip(err["signal"], err["measured"]))
    for row in rest:  # what earlier layers pass on adds to the merge's own error
        assert not row["error"]["exact"] and len(row["error"]["measured"]) == 2


def test_nothing_shared_measures_float_noise_only():
    result = zip_models(CNN, CALIB, share=0.0, names=NAMES, quiet=True)
    for row in result.report["layers"]:
        assert row["error"]["predicted"] is None
        assert all(m <= 1e-10 * s for m, s in zip(row["error"]["measured"], row["error"]["signal"]))


def test_a_wrong_layer_statistic_is_caught(monkeypatch):
    """A bug in the patch statistics (here: every patch 10% too large, as a wrong scale or count
    would make it) leaves the emitted graph consistent with the plan, so only the measurement in
    ORT can see it. (Natural images make many other bugs, such as mirrored or shifted patches,
    nearly invisible: their statistics are translation invariant.)"""
    from onnxzip.calibrate import stats
    real = stats.patches

    def scaled(layer, x):
        return 1.1 * real(layer, x)
    monkeypatch.setattr(stats, "patches", scaled)
    with pytest.raises(EquivalenceError, match="merge check: layer 'node_Conv_19'"):
        zip_models(CNN, CALIB, share=0.5, names=NAMES, quiet=True)


def test_without_recovery_the_originals_still_run_alongside_for_the_check():
    result = zip_models(CNN, CALIB, share=0.5, names=NAMES, recover=False, quiet=True)
    first = result.report["layers"][0]["error"]
    assert first["exact"]
    np.testing.assert_allclose(first["measured"], first["predicted"], rtol=1e-5)
