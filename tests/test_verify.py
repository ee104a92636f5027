"""The zip's self-check and report (onnxzip/check/verify.py) against independent numbers.

Oracles: the tolerance rule of check_equivalence and float_noise worked by hand on arrays built
to sit on either side of it; a model perturbed by hand must fail and its normalized form pass (both
run in ONNX Runtime); the report's fidelity of a zipped model recomputed with numpy from ONNX
Runtime runs of the original models and of the zipped model; zipped models with an initializer
edited by hand must be refused by verify; feeds, groups and warnings checked against structures
and messages written out by hand.
"""
import copy
import dataclasses
import logging
from types import SimpleNamespace

import graphs
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxzip import EquivalenceError, ZipOptions, zip_models
from onnxzip.tasks import load_tasks, reference_outputs, split
from onnxzip.check import verify as V
from onnxzip.graph.align import align
from onnxzip.graph.ir import build_ir

LOGGER = "onnxzip.check.verify"


class Rec(dict):
    """A hand-written report part readable both as a dict and by attribute (the report is becoming
    typed records; its fields keep the JSON keys)."""

    def __getattr__(self, name):
        return self.get(name)


def plain(x):
    """A report, or any part of it, as JSON-like values (dicts and lists), whether verify gave dicts
    or typed records."""
    if hasattr(x, "to_dict"):
        return x.to_dict()
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    if isinstance(x, list):
        return [plain(v) for v in x]
    return x


def session(m: onnx.ModelProto):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def edited(m: onnx.ModelProto, name: str, change) -> onnx.ModelProto:
    m = copy.deepcopy(m)
    for init in m.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init)), name))
    return m


def softmax(y: np.ndarray) -> np.ndarray:
    e = np.exp(y - y.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- float_noise -----------------------------------------------------------------------------------

def test_float_noise_is_the_max_difference_over_the_samples_held():
    original = np.zeros((5, 3))
    original[0] = [1.0, -4.0, 2.0]  # magnitude 4: bound 4e-3
    normalized = original[:3].copy()  # the normalized run holds the first 3 samples only
    normalized[1, 2] += 3e-3
    normalized[2, 0] -= 1e-3
    assert V.float_noise(normalized, original, "w") == pytest.approx(3e-3, rel=1e-9)
    original[4] = 0.5  # a sample past the ones held: not compared
    assert V.float_noise(normalized, original, "w") == pytest.approx(3e-3, rel=1e-9)
    assert V.float_noise(None, original, "w") == 0.0
    assert V.float_noise(normalized, np.zeros((0, 3)), "w") == 0.0
    assert V.float_noise(original[:3].copy(), original, "w") == 0.0


def test_float_noise_beyond_the_bound_is_a_normalization_bug():
    original = np.array([[0.5, -0.25]])  # magnitude under 1: bound 1e-3 (of 1)
    normalized = original + np.array([[0.0, 1.5e-3]])
    with pytest.raises(EquivalenceError, match=r"task x: the normalized model differs from the original file by "
                                               r"0\.0015 \(> 0\.001\)"):
        V.float_noise(normalized, original, "task x")
    assert V.float_noise(normalized, original, "task x", strict=False) == pytest.approx(1e-3)  # capped
    big = np.array([[8.0, -2.0]])  # magnitude 8: bound 8e-3
    assert V.float_noise(big + 7e-3, big, "w") == pytest.approx(7e-3)
    with pytest.raises(EquivalenceError):
        V.float_noise(big + 9e-3, big, "w")


# --- check_equivalence -----------------------------------------------------------------------------

REF = np.linspace(-5.0, 5.0, 1000)  # magnitude 5


@pytest.mark.parametrize("noise, tol", [(0.0, 5e-4),  # 1e-4 of the magnitude
                                        (1e-4, 2e-3),  # 20 x the noise
                                        (1e-3, 1e-2)])  # 20 x noise = 2e-2, capped at 2e-3 x 5
def test_equivalence_tolerance(noise, tol):
    diff, got_tol, verdict = V.check_equivalence(REF + 0.9 * tol, REF, noise, "w")
    assert (diff, got_tol, verdict) == (pytest.approx(0.9 * tol), pytest.approx(tol), "ok")
    small = REF / 50  # magnitude 0.1: the scale is 1
    assert V.check_equivalence(small + 9e-5, small, 0.0, "w") == (pytest.approx(9e-5), pytest.approx(1e-4), "ok")


def test_equivalence_rounding_and_mismatch(caplog):
    tol = 5e-4
    got = REF.copy()
    got[17] += 6 * tol  # one element in 1000, 6 tolerances: rounding
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert V.check_equivalence(got, REF, 0.0, "task a") == (pytest.approx(6 * tol), pytest.approx(tol), "rounding")
    assert "task a by 0.003 at 0.1% of the elements (tolerance 0.0005): float rounding, kept" in caplog.text

    spread = REF.copy()
    spread[:10] += 2 * tol  # 1% of the elements: still rounding
    assert V.check_equivalence(spread, REF, 0.0, "w")[2] == "rounding"
    spread[10] += 2 * tol  # 1.1%: a bug
    with pytest.raises(EquivalenceError, match=r"task a by 0\.001 at 1\.1% of the elements \(tolerance 0\.0005"):
        V.check_equivalence(spread, REF, 0.0, "task a")
    assert V.check_equivalence(spread, REF, 0.0, "w", strict=False) == (pytest.approx(2 * tol), pytest.approx(tol),
                                                                        "mismatch")
    gross = REF.copy()
    gross[3] -= 11 * tol  # one element, but 11 tolerances
    with pytest.raises(EquivalenceError):
        V.check_equivalence(gross, REF, 0.0, "w")
    # at the capped tolerance (2e-3 x 5 = 0.01), 10 tolerances would be 0.1 but rounding stops at 1% of the
    # magnitude (0.05)
    capped = REF.copy()
    capped[0] += 0.045
    assert V.check_equivalence(capped, REF, 1.0, "w") == (pytest.approx(0.045), pytest.approx(0.01), "rounding")
    capped[0] += 0.03  # 0.075: under 10 tolerances, over 1% of the magnitude
    assert V.check_equivalence(capped, REF, 1.0, "w", strict=False)[2] == "mismatch"
    assert V.check_equivalence(np.zeros(0), np.zeros(0), 0.0, "w") == (0.0, pytest.approx(1e-4), "ok")


def test_a_perturbed_model_fails_and_its_normalized_form_passes():
    m = graphs.mlp(0)
    x = {"x": graphs.data(1, (12,), n=64)}
    original = graphs.run(m, x)
    normalized = graphs.run(build_ir(m, "a", "a.onnx", 17).to_onnx(), x)
    noise = V.float_noise(normalized, original, "a")
    assert noise <= 1e-6  # (Dropout and Identity dropped: the same arithmetic)
    diff, tol, verdict = V.check_equivalence(normalized, original, noise, "a")
    assert verdict == "ok" and diff == pytest.approx(np.max(np.abs(normalized - original)), abs=1e-12)
    perturbed = graphs.run(edited(m, "w1", lambda w: w + np.float32(0.01)), x)  # every weight of fc1 + 0.01
    assert np.max(np.abs(perturbed - original)) > 10 * tol
    with pytest.raises(EquivalenceError, match="this is an onnxzip bug"):
        V.check_equivalence(perturbed, original, noise, "a")


# --- output_kind, as_array, data_groups --------------------------------------------------------------

def sigmoid_reshaped(seed: int) -> onnx.ModelProto:
    """mlp 12-16-6 whose logits pass Sigmoid, then Reshape to (N, 2, 3) and Identity."""
    m = graphs.mlp(seed, sizes=(12, 16, 6))
    out = next(n for n in m.graph.node if n.name == "out")
    out.output[0] = "y6"
    m.graph.initializer.append(numpy_helper.from_array(np.array([-1, 2, 3], np.int64), "shape23"))
    m.graph.node.extend([helper.make_node("Sigmoid", ["y6"], ["s"], name="sig"),
                         helper.make_node("Reshape", ["s", "shape23"], ["r"], name="reshape"),
                         helper.make_node("Identity", ["r"], ["y"], name="ident_out")])
    del m.graph.output[:]
    m.graph.output.append(graphs.inp("y", ["N", 2, 3]))
    return m


def test_output_kind():
    value2, value1, value3 = np.zeros((4, 3)), np.zeros((4, 1)), np.zeros((4, 2, 3))
    softmax_ir = build_ir(graphs.convnet(0), "a", "a.onnx", 17)  # ... Gemm -> Softmax
    assert V.output_kind(softmax_ir, "y", value1) == "classifier"  # by its op, whatever the shape
    sigmoid_ir = build_ir(graphs.ln_mlp(0), "a", "a.onnx", 18)  # ... Gemm -> Sigmoid
    assert V.output_kind(sigmoid_ir, "y", value2) == "scores"
    reshaped = build_ir(sigmoid_reshaped(0), "a", "a.onnx", 17)  # Sigmoid -> Reshape -> Identity
    assert graphs.run(sigmoid_reshaped(0), {"x": graphs.data(0, (12,), n=2)}).shape == (2, 2, 3)
    assert V.output_kind(reshaped, "y", value3) == "scores"
    gemm_ir = build_ir(graphs.mlp(0), "a", "a.onnx", 17)  # logits of a Gemm: by the shape
    assert V.output_kind(gemm_ir, "y", value2) == "classifier"
    assert V.output_kind(gemm_ir, "y", value1) == "values"
    assert V.output_kind(gemm_ir, "y", value3) == "values"


def test_as_array():
    a = np.arange(6.0).reshape(2, 3)
    assert V.as_array(a) is a
    zipmap = [{1: 0.25, 0: 0.75}, {0: 0.5, 1: 0.5}, {1: 1.0, 0: 0.0}]
    got = V.as_array(zipmap)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [[0.75, 0.25], [0.5, 0.5], [0.0, 1.0]])  # keys in order: 0, 1
    named = V.as_array([{"cat": 0.1, "bird": 0.9}])
    np.testing.assert_array_equal(named, [[0.9, 0.1]])  # "bird" < "cat"
    for other in ([], [1, 2], None, "x", {"a": 1}):
        assert V.as_array(other) is None


def test_data_groups():
    x = graphs.data(0, (4,), n=6)
    a = {"x": x}
    same_values = {"x": x.copy()}
    other_values = {"x": x + 1}
    other_dtype = {"x": x.astype(np.float64)}
    more_keys = {"x": x, "m": x}
    assert V.data_groups([a, a, same_values, other_values, other_dtype, more_keys, other_values]) == \
        [[0, 1, 2], [3, 6], [4], [5]]
    assert V.data_groups([a]) == [[0]]


# --- zipped_feeds ----------------------------------------------------------------------------------

def feeds_model(extra: list[tuple[str, int, list]]) -> onnx.ModelProto:
    """Inputs a/x (N, 4) float plus ``extra`` (name, elem type, shape), each passed to an output."""
    inputs = [("a/x", TensorProto.FLOAT, ["N", 4])] + extra
    nodes = [helper.make_node("Identity", [n], [f"{n}.out"], name=f"id{i}") for i, (n, _, _) in enumerate(inputs)]
    return graphs.model(nodes, [], [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                        [helper.make_tensor_value_info(f"{n}.out", t, None) for n, t, s in inputs])


def test_zipped_feeds_gives_zeros_for_the_other_tasks_inputs():
    sess = session(feeds_model([("b/ids", TensorProto.INT64, ["N", "T"]), ("b/m", TensorProto.FLOAT, ["N", 3, "W"])]))
    x = graphs.data(0, (4,), n=7)
    feeds = V.zipped_feeds(sess, {"a/x": x})
    assert list(feeds) == ["a/x", "b/ids", "b/m"]
    assert feeds["a/x"] is x
    assert feeds["b/ids"].dtype == np.int64 and feeds["b/ids"].shape == (7, 1) and not feeds["b/ids"].any()
    assert feeds["b/m"].dtype == np.float32 and feeds["b/m"].shape == (7, 3, 1) and not feeds["b/m"].any()
    out = sess.run(None, feeds)  # ONNX Runtime takes them
    np.testing.assert_array_equal(out[0], x)


# zipped_feeds once filled every non-float input with int64 zeros and every float one with float32
# zeros: a task whose zipped model also takes another task's bool, int32 or double input could not run alone


def test_zipped_feeds_zeros_have_the_inputs_types():
    sess = session(feeds_model([("b/keep", TensorProto.BOOL, ["N", 3]), ("b/pos", TensorProto.INT32, ["N", 3]),
                                ("b/w", TensorProto.DOUBLE, ["N", 2])]))
    feeds = V.zipped_feeds(sess, {"a/x": graphs.data(0, (4,), n=5)})
    assert [feeds[k].dtype for k in ("b/keep", "b/pos", "b/w")] == [np.bool_, np.int32, np.float64]
    assert len(sess.run(None, feeds)) == 4  # ONNX Runtime takes them


def masked_mlp(seed: int) -> onnx.ModelProto:
    """:func:`graphs.mlp` whose input passes Where(keep, x, 0) first: ``keep`` a bool input (N, 12)."""
    m = graphs.mlp(seed)
    next(n for n in m.graph.node if n.name == "fc0").input[0] = "xm"
    m.graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    m.graph.node.insert(0, helper.make_node("Where", ["keep", "x", "zero"], ["xm"], name="mask"))
    m.graph.input.append(helper.make_tensor_value_info("keep", TensorProto.BOOL, ["N", 12]))
    return m


def test_zipped_feeds_run_one_task_of_a_zip_with_bool_inputs():
    """Two masked mlps zipped with separate inputs (a/x, a/keep, b/x, b/keep): task a alone, the
    zeros for b's inputs filled in, must give task a's original output (share 0)."""
    models = [masked_mlp(1), masked_mlp(2)]
    d = {"x": graphs.data(3, (12,), n=32), "keep": np.random.default_rng(0).random((32, 12)) > 0.2}
    result, _ = zipped(models, [d], share=0.0, separate_inputs=True)
    sess = session(result.model)
    feeds = V.zipped_feeds(sess, result.inputs_for(0, d))
    assert sorted(feeds) == ["a/keep", "a/x", "b/keep", "b/x"]
    np.testing.assert_allclose(sess.run(["a/y"], feeds)[0], graphs.run(models[0], d), atol=1e-5)


# --- warn_fidelity -----------------------------------------------------------------------------------

def test_warn_fidelity_messages(caplog):
    report = Rec(tasks=[Rec(name="a", verdict="collapsed", top1_agreement=0.3, mask_iou=None, rel_err=0.9),
                        Rec(name="b", verdict="collapsed", top1_agreement=None, mask_iou=0.25, fired=0.4,
                            rel_err=0.5),
                        Rec(name="c", verdict="collapsed", top1_agreement=None, mask_iou=None, rel_err=0.75),
                        Rec(name="d", verdict="degraded", top1_agreement=0.8, rel_err=0.2)],
                 layers=[Rec(name="fc0", shared=4)], not_shared=[])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        V.warn_fidelity(report, ZipOptions(share=0.5))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0].startswith("task 'a' COLLAPSED against its original on held-out data: top-1 agreement "
                               "0.300; share less")
    assert "task 'b' COLLAPSED" in lines[1] and ": mask IoU 0.250 (fires 40% as often); share less" in lines[1]
    assert "task 'c' COLLAPSED" in lines[2] and ": relative error 0.75; share less" in lines[2]


def test_warn_fidelity_when_nothing_is_shared(caplog):
    report = Rec(tasks=[], layers=[Rec(name="fc0", shared=0), Rec(name="fc1", shared=0)],
                 not_shared=[Rec(layer="fc0", reason="r0"), Rec(layer="fc1", reason="r1")])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        V.warn_fidelity(report, ZipOptions(share=0.0))  # nothing asked: nothing said
        assert caplog.records == []
        V.warn_fidelity(report, ZipOptions(share=(0.0, 0.5)))
        V.warn_fidelity(report, ZipOptions(share=0.0, target_params=0.5))
        V.warn_fidelity(Rec(report, not_shared=[]), ZipOptions(share=0.5))
    assert [r.getMessage() for r in caplog.records] == ["nothing is shared: fc0: r0; fc1: r1"] * 2 + \
        ["nothing is shared: no zippable layer"]


# --- not_shared ------------------------------------------------------------------------------------

def plan_of(shared: dict[int, int], hidden: list[int], groups: list[list[int]]):
    return SimpleNamespace(layers={i: SimpleNamespace(shared=s) for i, s in shared.items()}, hidden=hidden,
                           groups=groups)


def test_not_shared_rows():
    ir = build_ir(graphs.mlp(0), "a", "a.onnx", 17)  # fc0 (16), fc1 (10) hidden; fc2 the head
    plan = plan_of({0: 0, 1: 3, 2: 0}, [0, 1], [[0], [1]])
    assert plain(V.not_shared([ir], plan, ZipOptions(share=0.05))) == \
        [{"layer": "fc0", "reason": "share 0.05 of 16 neurons rounds to none"}]
    both = plan_of({0: 0, 1: 0, 2: 0}, [0, 1], [[0], [1]])
    assert plain(V.not_shared([ir], both, ZipOptions(share=(0.0, 0.02)))) == \
        [{"layer": "fc1", "reason": "share 0.02 of 10 neurons rounds to none"}]  # fc0's 0 was asked for
    budget = "the budget shares none here (predicted loss per parameter saved too high)"
    assert plain(V.not_shared([ir], both, ZipOptions(target_params=0.5))) == [{"layer": "fc0", "reason": budget},
                                                                     {"layer": "fc1", "reason": budget}]
    assert plain(V.not_shared([ir], plan_of({}, [], []), ZipOptions())) == \
        [{"layer": "-", "reason": "no layer's channels reach another layer (only heads: nothing to share)"}]


def test_not_shared_skips_depthwise_followers():
    ir = build_ir(graphs.mobilenet(0), "a", "a.onnx", 17)  # stem dw1 pw1 dw2 pw2 head; dw1, dw2 follow
    assert [ir.layers[i].name for i in ir.spaces.followers] == ["dw1", "dw2"]
    plan = plan_of({i: 0 for i in range(6)}, [0, 1, 2, 3, 4], [[0], [2], [4]])
    rows = plain(V.not_shared([ir], plan, ZipOptions(share=0.01)))
    assert rows == [{"layer": "stem", "reason": "share 0.01 of 8 neurons rounds to none"},
                    {"layer": "pw1", "reason": "share 0.01 of 12 neurons rounds to none"},
                    {"layer": "pw2", "reason": "share 0.01 of 16 neurons rounds to none"}]


# --- verify on zipped models -------------------------------------------------------------------------

def zipped(models, data, **opts):
    names = ("a", "b")
    result = zip_models(models, data, share=opts.pop("share", 0.5), quiet=True, names=names, **opts)
    return result, names


def originals_and_zipped(result, models, data, names):
    """Per task: (original output, zipped output) from ONNX Runtime runs done here."""
    zs = session(result.model)
    out = []
    for t, (m, d) in enumerate(zip(models, data)):
        o = graphs.run(m, d)
        z = zs.run([f"{names[t]}/y"], V.zipped_feeds(zs, result.inputs_for(t, d)))[0]
        out.append((o.astype(np.float64), z.astype(np.float64)))
    return out


def held_out(data, n):
    """The held-out part of each task's data (:func:`onnxzip.tasks.split`, the default fraction)."""
    _, held = split(n, ZipOptions().hold_out)
    return [{k: v[held] for k, v in d.items()} for d in data]


def by_hand(o: np.ndarray, z: np.ndarray, kind: str) -> dict:
    row = {"rel_err": np.linalg.norm(z - o) / np.linalg.norm(o), "max_abs_diff": np.max(np.abs(z - o))}
    if kind == "classifier":
        row["top1_agreement"] = np.mean(np.argmax(z, 1) == np.argmax(o, 1))
        metric, collapse, degraded = row["top1_agreement"], 0.5, 0.9
    else:
        inter = np.sum((z > 0.5) & (o > 0.5))
        row["mask_iou"] = inter / np.sum((z > 0.5) | (o > 0.5))
        row["fired"] = np.sum(z > 0.5) / np.sum(o > 0.5)
        metric, collapse, degraded = row["mask_iou"], 0.5, 0.9
    p, q = softmax(o), softmax(z)  # rows that are not distributions are logits (sigmoid scores too)
    row["loss_increase"] = np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    row["verdict"] = "collapsed" if metric < collapse else "degraded" if metric < degraded else "ok"
    return row


CASES = {"mlp": (graphs.mlp, (12,), "classifier"), "cnn": (graphs.cnn, (3, 8, 8), "classifier"),
         "ln_mlp": (graphs.ln_mlp, (3, 8, 8), "scores")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_report_fidelity_recomputed_from_the_models(case):
    build, shape, kind = CASES[case]
    models = [build(1), build(2)]
    data = [{"x": graphs.data(3, shape, n=100)}, {"x": graphs.data(4, shape, n=100)}]
    result, names = zipped(models, data)
    report = plain(result.report)
    assert report["samples"] == [80, 80] and report["attention"] == []  # fitted to 80, judged on 20
    data = held_out(data, 100)
    assert report["equivalence"]["verdict"] == "ok"
    assert report["equivalence"]["max_abs_diff"] <= report["equivalence"]["tolerance"]
    for row, (o, z) in zip(report["tasks"], originals_and_zipped(result, models, data, names)):
        want = by_hand(o, z, kind)
        assert row["output"] == "y" and row["verdict"] == want["verdict"] and row["held_out"]
        for key in ("rel_err", "max_abs_diff", "loss_increase"):
            assert row[key] == pytest.approx(want[key], rel=1e-4, abs=1e-7), key
        if kind == "classifier":
            assert row["top1_agreement"] == pytest.approx(want["top1_agreement"], abs=1 / 64 + 1e-12)
            assert row["mask_iou"] is None
        else:
            assert row["mask_iou"] == pytest.approx(want["mask_iou"], abs=0.02)  # (a score at 0.5 may flip)
            assert row["fired"] == pytest.approx(want["fired"], abs=0.02)
            assert row["top1_agreement"] is None
        assert 0 < row["rel_err"] < 0.5  # something was shared, and it stayed close
    # sizes: the zipped model's float initializers counted here; for the mlp, the originals' parameters
    # (12*16+16) + (16*10+10) + (10*3+3) per model
    after = sum(numpy_helper.to_array(i).size for i in result.model.graph.initializer
                if numpy_helper.to_array(i).dtype.kind == "f")
    assert report["params_after"] == after < report["params_before"]
    if case == "mlp":
        assert report["params_before"] == 2 * 411 == sum(numpy_helper.to_array(i).size for m in models
                                                         for i in m.graph.initializer)
        assert [(r["name"], r["neurons"], r["shared"]) for r in report["layers"]] == [("fc0", 16, 8), ("fc1", 10, 5)]


def test_report_with_nothing_shared_reproduces_the_originals():
    models = [graphs.mlp(1), graphs.mlp(2)]
    data = [{"x": graphs.data(3, (12,), n=100)}]
    result, names = zipped(models, data, share=0.0)
    for row, (o, z) in zip(plain(result.report)["tasks"], originals_and_zipped(result, models, held_out(data, 100) * 2,
                                                                               names)):
        assert np.max(np.abs(z - o)) <= 1e-5
        assert row["max_abs_diff"] <= 1e-5 and row["rel_err"] <= 1e-5 and row["top1_agreement"] == 1.0
        assert row["verdict"] == "ok" and abs(row["loss_increase"]) <= 1e-9
    assert all(r["shared"] == 0 for r in plain(result.report)["layers"]) and plain(result.report)["not_shared"] == []


def zip_and_irs(share: float):
    """A zip of two mlps on the same data, and what verify needs to run again: the aligned IRs, the
    arrays, the options and the original files' outputs."""
    models = [graphs.mlp(1), graphs.mlp(2)]
    data = [{"x": graphs.data(3, (12,), n=64)}] * 2
    result, names = zipped(models, data, share=share, hold_out=0)  # (verify judges on the data given)
    opts = ZipOptions(share=share, quiet=True, names=names, hold_out=0)
    protos, irs, arrays = load_tasks(models, list(names), data)
    irs = align(irs)
    references = reference_outputs(protos, irs, arrays, opts)
    return result, irs, arrays, opts, references


@pytest.fixture(scope="module")
def mlp_zip():
    return zip_and_irs(0.5)


def test_verify_again_gives_the_same_report(mlp_zip):
    result, irs, arrays, opts, references = mlp_zip
    for t, m in enumerate((graphs.mlp(1), graphs.mlp(2))):  # the references are the original files' outputs
        np.testing.assert_allclose(references[t]["y"], graphs.run(m, {"x": arrays[t]["x"]}), rtol=0, atol=1e-6)
    again = plain(V.verify(result, irs, arrays, opts, references))
    assert again["tasks"] == plain(result.report)["tasks"]
    assert again["equivalence"] == plain(result.report)["equivalence"]


def test_verify_refuses_a_zipped_model_edited_by_hand(mlp_zip):
    result, irs, arrays, opts, references = mlp_zip
    name = next(i.name for i in result.model.graph.initializer if i.name.startswith("a/"))
    bad = copy.copy(result)
    bad.model = edited(result.model, name, lambda w: w + np.float32(0.1))
    with pytest.raises(EquivalenceError, match=r"task 'a' output 'y': the zipped model differs from the zipped "
                                               r"network"):
        V.verify(bad, irs, arrays, opts, references)
    unchecked = plain(V.verify(bad, irs, arrays, opts, references, check=False))
    assert unchecked["equivalence"]["verdict"] == "not checked"
    assert unchecked["equivalence"]["max_abs_diff"] > 10 * unchecked["equivalence"]["tolerance"]
    assert unchecked["tasks"][1] == plain(result.report)["tasks"][1]  # task b untouched
    (o, z), _ = originals_and_zipped(bad, [graphs.mlp(1), graphs.mlp(2)], arrays, ("a", "b"))
    assert unchecked["tasks"][0]["rel_err"] == pytest.approx(by_hand(o, z, "classifier")["rel_err"], rel=1e-4)


def test_verify_with_nothing_shared_compares_with_the_originals_too():
    """At share 0 the zipped model must also reproduce the original files: a zipped network (the plan's
    outputs) that agrees with a wrong zipped model does not hide it."""
    result, irs, arrays, opts, references = zip_and_irs(0.0)
    assert plain(V.verify(result, irs, arrays, opts, references))["equivalence"]["max_abs_diff"] <= 1e-5
    name = next(i.name for i in result.model.graph.initializer if i.name.startswith("a/"))
    bad = copy.copy(result)
    bad.model = edited(result.model, name, lambda w: w + np.float32(0.1))
    sess = session(bad.model)
    wrong = sess.run(["a/y"], V.zipped_feeds(sess, bad.inputs_for(0, arrays[0])))[0]
    bad.plan = copy.copy(result.plan)
    bad.plan.outputs = [{"y": wrong}, result.plan.outputs[1]]  # as if the zipper had made these weights
    with pytest.raises(EquivalenceError, match=r"task 'a' output 'y': with nothing shared the zipped model differs "
                                               r"from the original"):
        V.verify(bad, irs, arrays, opts, references)


def test_task_sessions_group_tasks_by_their_data():
    """The same samples: one session for both tasks. Different samples: one pruned session per task,
    whose output at share 0 is its original model's on its own data."""
    models = [graphs.mlp(1), graphs.mlp(2)]
    same = [{"x": graphs.data(3, (12,), n=32)}] * 2
    result, _ = zipped(models, same, share=0.0)
    groups = list(V.task_sessions(result, same, "cpu"))
    assert [g for g, _, _ in groups] == [[0, 1]]
    assert [o.name for o in groups[0][1].get_outputs()] == ["a/y", "b/y"] and list(groups[0][2]) == ["x"]

    apart = [{"x": graphs.data(3, (12,), n=32)}, {"x": graphs.data(4, (12,), n=32)}]
    result, _ = zipped(models, apart, share=0.0)
    groups = list(V.task_sessions(result, apart, "cpu"))
    assert [g for g, _, _ in groups] == [[0], [1]]
    for (group, sess, feeds), task, m, d in zip(groups, "ab", models, apart):
        assert [o.name for o in sess.get_outputs()] == [f"{task}/y"]
        assert list(feeds) == ["x"] and feeds["x"] is d["x"]
        np.testing.assert_allclose(sess.run(None, feeds)[0], graphs.run(m, d), atol=1e-5)

    separate, _ = zipped(models, same, share=0.0, separate_inputs=True)
    (group, sess, feeds), = V.task_sessions(separate, same, "cpu")
    assert group == [0, 1] and sorted(feeds) == ["a/x", "b/x"]
    assert feeds["a/x"] is same[0]["x"] and feeds["b/x"] is same[1]["x"]


@pytest.mark.parametrize("n", [1, 9])
def test_too_few_calibration_samples_are_never_judged_ok(n, caplog):
    """With fewer samples than can be held out the zip is fitted to all of them, and a verdict on the
    samples it was fitted to is no verdict: 'too few to judge', said, never 'ok'; a layer whose
    statistic has fewer rows than its size is named in a warning."""
    models = [graphs.mlp(1), graphs.mlp(2)]
    data = [{"x": graphs.data(3, (12,), n=n)}, {"x": graphs.data(4, (12,), n=n)}]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result, _ = zipped(models, data, share=0.0)
    rows = plain(result.report)["tasks"]
    assert [r["verdict"] for r in rows] == ["too few to judge"] * 2 and not any(r["held_out"] for r in rows)
    assert all(r["rel_err"] <= 1e-5 for r in rows)  # (share 0: it does reproduce the originals)
    assert result.report["samples"] == [n, n]
    assert any("too few calibration samples to hold any out" in r.getMessage() for r in caplog.records)
    # fc0 reads 12 inputs: its statistic (13 x 13) needs 13 rows, one per sample here
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        zipped(models, data, share=0.5)
    assert any("layers' statistics read fewer rows than their size" in r.getMessage()
               and f"fc0: {n} rows for 13" in r.getMessage() for r in caplog.records)


def test_held_out_samples_are_not_fitted_to():
    """Fitted to 80 of 100 samples, judged on the other 20: the split is the seeded one of
    onnxzip.tasks.split, disjoint, and the same for the same sample count."""
    fit, held = split(100, 0.2)
    assert len(held) == 20 and len(fit) == 80 and not set(fit) & set(held)
    assert np.array_equal(split(100, 0.2)[1], held) and len(split(9, 0.2)[1]) == 0
    assert len(split(100, 0.2, unit=8)[1]) == 16  # whole batches of a fixed-batch model
