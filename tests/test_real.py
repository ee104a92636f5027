"""Real pretrained models nobody here trained (tools/fetch_real.py; skipped when not fetched).

The originals in ONNX Runtime are the oracle: share 0 must reproduce them within float noise.
"""
import sys

import numpy as np
import pytest

from conftest import ROOT
from onnxzip import zip_models

sys.path.insert(0, str(ROOT / "tools"))
from fetch_real import SETS, model_path  # noqa: E402

pytestmark = pytest.mark.real


def real_set(name: str, n: int, **kw) -> tuple[list[str], list[dict]]:
    paths = [model_path(name, t) for t in SETS[name]]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"real models {name!r} not fetched (python tools/fetch_real.py)")
    if name.startswith("ocr"):
        pytest.importorskip("skimage")  # photos for the image sets
    import real_data
    data = []
    for i, task in enumerate(SETS[name]):
        d = real_data.set_inputs(name, task, n, seed=i)
        d.pop("label", None)
        data.append(d)
    return [str(p) for p in paths], data


def originals(paths, data):
    import onnxruntime as ort
    out = []
    for p, d in zip(paths, data):
        sess = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
        out.append(sess.run(None, d)[0])
    return out


@pytest.mark.parametrize("name", ["sk_mlp5", "sk_mlp6"])
def test_skl2onnx_regressor_pairs(name):
    paths, data = real_set(name, 64)
    zero = zip_models(paths, data, share=0.0, quiet=True)
    assert len(zero.plan.hidden) == 2
    names = zero.names
    for t, ref in enumerate(originals(paths, data)):
        got = np.asarray(zero.plan.outputs[t]["variable"])
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
        assert zero.report["tasks"][t]["name"] == names[t] and zero.report["tasks"][t]["verdict"] == "ok"
    half = zip_models(paths, data, share=0.5, quiet=True)
    assert [row["shared"] for row in half.report["layers"]] == [64, 64]
    assert half.report["params_after"] < 0.9 * half.report["params_before"]


@pytest.mark.slow
def test_ppocr_text_detectors_share_zero_within_float_noise():
    paths, data = real_set("ocr_det", 4)
    zero = zip_models(paths, data, share=0.0, quiet=True)
    for row in zero.report["tasks"]:
        assert row["max_abs_diff"] <= 1e-3 and row["verdict"] == "ok"


@pytest.mark.slow
def test_ppocr_orientation_classifiers_align_and_zip():
    paths, data = real_set("ocr_cls", 8)
    zero = zip_models(paths, data, share=0.0, quiet=True)
    for row in zero.report["tasks"]:
        assert row["max_abs_diff"] <= 1e-4 and row["top1_agreement"] == 1.0
    half = zip_models(paths, data, share=0.5, quiet=True)
    assert sum(row["shared"] for row in half.report["layers"]) > 0
