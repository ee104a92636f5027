"""Models as exporters write them: torch legacy vs dynamo, skl2onnx, and the onnx wheel's zoo."""
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from conftest import SAMPLES

from onnxzip import zip_models
from onnxzip.graph.io import load_arrays

CALIB = [SAMPLES / "calib_digit.npz", SAMPLES / "calib_parity.npz"]


def session(model):
    import onnxruntime as ort
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("first", ["resnet_digit.onnx", "resnet_digit_legacy.onnx"])
def test_resnet_from_both_torch_exporters(first):
    """The dynamo export (ReduceMean, Reshape) zips with itself and against the legacy export
    (GlobalAveragePool, Flatten, other names and attribute defaults)."""
    models = [SAMPLES / first, SAMPLES / "resnet_parity.onnx"]
    zero = zip_models(models, CALIB, share=0.0, quiet=True, names=("digit", "parity"))
    x = load_arrays(SAMPLES / "test_digit.npz")["image"][:100]
    got = dict(zip([o.name for o in zero.model.graph.output], session(zero.model).run(None, {"image": x})))
    for t, m in zip(("digit", "parity"), models):
        np.testing.assert_allclose(got[f"{t}/logits"], session(m).run(None, {"image": x})[0], atol=1e-5)
    groups = [g["layers"] for g in zero.report["groups"]]
    assert len(groups) == 2 and all(len(g) == 2 for g in groups)  # the two residual streams
    half = zip_models(models, CALIB, share=0.5, quiet=True)
    onnx.checker.check_model(half.model, full_check=True)
    assert half.report["params_after"] < half.report["params_before"]


def test_sklearn_mlp_keeps_zipmap_outputs_per_task():
    models = [SAMPLES / "sklearn_digit.onnx", SAMPLES / "sklearn_parity.onnx"]
    calib = [SAMPLES / "calib_flat_digit.npz", SAMPLES / "calib_flat_parity.npz"]
    for share in (0.0, 0.5):
        result = zip_models(models, calib, share=share, quiet=True, names=("digit", "parity"))
        names = [o.name for o in result.model.graph.output]
        assert names == ["digit/output_label", "digit/output_probability", "parity/output_label",
                         "parity/output_probability"]
        x = load_arrays(calib[0])["X"][:20]
        out = dict(zip(names, session(result.model).run(None, {"X": x})))
        assert isinstance(out["digit/output_probability"], list) and len(out["digit/output_probability"][0]) == 10
        assert set(out["parity/output_probability"][0]) == {0, 1}
        if share == 0.0:
            ref = session(models[0]).run(None, {"X": x})
            np.testing.assert_array_equal(out["digit/output_label"], ref[0])
            for a, b in zip(out["digit/output_probability"], ref[1]):
                assert a == pytest.approx(b, abs=1e-6)
        assert result.report["tasks"][0]["top1_agreement"] >= 0.95


ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
FAST_ZOO = ["squeezenet", "shufflenet", "inception_v1"]
SLOW_ZOO = ["inception_v2", "resnet50", "densenet121", "bvlc_alexnet", "zfnet512", "vgg19"]  # 10-60 s each


def randomized(name: str, seed: int) -> onnx.ModelProto:
    """A zoo model (ConstantOfShape weights, opset 9, IR 3) with random He-scaled weights."""
    m = onnx.load(str(ZOO / f"light_{name}.onnx"))
    g = gs.import_onnx(m)
    g.inputs = [t for t in g.inputs if not t.inputs and not isinstance(t, gs.Constant)]
    gs.logger.G_LOGGER.module_severity = gs.logger.G_LOGGER.ERROR
    g.fold_constants().cleanup()
    rng = np.random.default_rng(seed)
    for n in g.nodes:
        if n.op in ("Conv", "Gemm") and isinstance(n.inputs[1], gs.Constant):
            w = n.inputs[1].values
            fan = np.prod(w.shape[1:]) if n.op == "Conv" else w.shape[1 if n.attrs.get("transB", 0) else 0]
            n.inputs[1].values = (rng.normal(size=w.shape) * np.sqrt(2.0 / fan)).astype(np.float32)
            if len(n.inputs) > 2 and isinstance(n.inputs[2], gs.Constant):
                n.inputs[2].values = rng.normal(0, 0.01, n.inputs[2].values.shape).astype(np.float32)
        if n.op == "BatchNormalization":
            c = n.inputs[1].values.shape
            for i, v in zip(range(1, 5), (rng.uniform(0.5, 1.5, c), rng.normal(0, .1, c), rng.normal(0, .1, c),
                                          rng.uniform(0.5, 1.5, c))):
                n.inputs[i].values = v.astype(np.float32)
    out = gs.export_onnx(g)
    out.ir_version = m.ir_version
    del out.opset_import[:]
    out.opset_import.extend(m.opset_import)
    return out


def zoo_equivalence(name: str) -> None:
    a, b = randomized(name, 1), randomized(name, 2)
    shape = [d.dim_value for d in a.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).random([2] + shape[1:], dtype=np.float32)
    result = zip_models([a, b], [{a.graph.input[0].name: x}] * 2, share=0.0, quiet=True, names=("a", "b"))
    assert result.report["equivalence_max_abs_diff"] <= 1e-4
    assert all(t["max_abs_diff"] <= 1e-4 for t in result.report["tasks"])
    # equal, less any per-channel constants that are byte-identical in both copies (stored once)
    assert result.report["params_after"] <= result.report["params_before"]


@pytest.mark.parametrize("name", FAST_ZOO)
def test_zoo_models_zip_with_share_zero_equivalence(name):
    zoo_equivalence(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_ZOO)
def test_large_zoo_models_zip_with_share_zero_equivalence(name):
    zoo_equivalence(name)
