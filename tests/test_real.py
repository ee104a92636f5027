"""Real pretrained models nobody here trained (tools/fetch_real.py; skipped when not fetched).

The originals in ONNX Runtime are the oracle: share 0 must reproduce them within float noise.
"""
import sys

import numpy as np
import pytest
from conftest import ROOT

from onnxzip import zip_models

sys.path.insert(0, str(ROOT / "tools"))
from fetch_real import HF_EXPORTS, SETS, model_path  # noqa: E402

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
    zero = zip_models(paths, data, share=0.0, quiet=True, hold_out=0)  # (plan.outputs: every sample)
    assert len(zero.plan.hidden) == 2
    names = zero.names
    for t, ref in enumerate(originals(paths, data)):
        got = np.asarray(zero.plan.outputs[t]["variable"])
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
        assert zero.report["tasks"][t]["name"] == names[t] and zero.report["tasks"][t]["verdict"] == \
            "not judged (--hold-out 0)"
    half = zip_models(paths, data, share=0.5, quiet=True)
    assert [row["shared"] for row in half.report["layers"]] == [64, 64]
    assert half.report["params_after"] < 0.9 * half.report["params_before"]


@pytest.mark.slow
def test_ppocr_text_detectors_share_zero_within_float_noise():
    paths, data = real_set("ocr_det", 4)
    zero = zip_models(paths, data, share=0.0, quiet=True)
    for row in zero.report["tasks"]:
        assert row["max_abs_diff"] <= 1e-3 and row["verdict"] == "too few to judge"  # 4 samples: none held out


@pytest.mark.slow
def test_ppocr_orientation_classifiers_align_and_zip():
    paths, data = real_set("ocr_cls", 8)
    zero = zip_models(paths, data, share=0.0, quiet=True)
    for row in zero.report["tasks"]:
        assert row["max_abs_diff"] <= 1e-4 and row["top1_agreement"] == 1.0
    half = zip_models(paths, data, share=0.5, quiet=True)
    assert sum(row["shared"] for row in half.report["layers"]) > 0


@pytest.mark.slow
def test_ppocr_text_detectors_calibrate_from_a_folder_of_pngs(tmp_path):
    """The detectors' own recipe (320x320, BGR, ImageNet mean and std) read from PNG files gives the
    arrays tools/real_data.py computes in numpy, and share 0 reproduces both originals on them."""
    paths, _ = real_set("ocr_det", 4)
    import real_data
    from PIL import Image

    from onnxzip.graph.io import InputSpec
    from onnxzip.images import ImageRecipe, load_folder
    images = np.concatenate([real_data.seal_stamps(3, (320, 320), 0), real_data.crops(3, (320, 320), 0)])
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    recipe = dict(image_size=(320, 320), mean=tuple(real_data.IMAGENET_MEAN), std=tuple(real_data.IMAGENET_STD),
                  bgr=True)
    got = load_folder(tmp_path, [InputSpec("x", np.dtype(np.float32), (None, 3, None, None))],
                      ImageRecipe(size=recipe["image_size"], mean=recipe["mean"], std=recipe["std"], bgr=True))["x"]
    np.testing.assert_allclose(got, real_data.imagenet_bgr(images), atol=1e-5)
    zero = zip_models(paths, [str(tmp_path)], share=0.0, quiet=True, **recipe)
    import onnxruntime as ort
    sess = ort.InferenceSession(zero.model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    got_zipped = sess.run(outs, {sess.get_inputs()[0].name: got})
    for t, ref in enumerate(originals(paths, [{"x": got}] * 2)):
        assert zero.report["tasks"][t]["verdict"] == "too few to judge"  # 6 images: none held out
        np.testing.assert_allclose(got_zipped[t], ref, atol=1e-3 * max(1.0, np.abs(ref).max()))


@pytest.mark.slow
def test_minilm_sentence_encoder_zipped_with_itself():
    """all-MiniLM-L6-v2 (real weights, exported by tools/fetch_real.py --sets minilm) zipped with
    itself: share 0 reproduces it, and so must share 1 (every neuron pairs with its twin at zero
    cost and the merge returns it): the transformer path on a real HF export at real size."""
    path = model_path("minilm", "minilm")
    if "minilm" not in HF_EXPORTS or not path.is_file():
        pytest.skip("all-MiniLM-L6-v2 not exported (python tools/fetch_real.py --sets minilm)")
    import onnxruntime as ort
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (48, 16))
    ids[:, 0] = 101  # [CLS]
    mask = np.ones_like(ids)
    mask[::4, 11:] = 0
    data = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, data)[0]
    for share in (0.0, 1.0):
        r = zip_models([str(path)] * 2, [data, data], share=share, quiet=True, names=("a", "b"))
        sess = ort.InferenceSession(r.model.SerializeToString(), providers=["CPUExecutionProvider"])
        for got in sess.run(["a/last_hidden_state", "b/last_hidden_state"], data):
            np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())
        assert r.report["deployment_problems"] == []
