"""onnxzip.sharing.budget and the budget path of zip_models, each against an independent oracle:
parameters counted by hand in the emitted ONNX (numpy_helper over its initializers), brute force over
every count vector of a tiny allocation problem, and the MTZ pair costs re-derived in numpy from the
calibration data and matched by brute force over every permutation."""
import itertools
from pathlib import Path

import graphs
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxzip import ZipOptions, zip_models
from onnxzip.budgets import _next_cap
from onnxzip.graph.align import align
from onnxzip.report.records import BudgetTry
from onnxzip.sharing.budget import (
    POWER_RANGE,
    fit_loss_scale,
    predict_costs,
    saving_model,
)
from onnxzip.sharing.plan import Budget, Counts, allocate
from onnxzip.tasks import load_tasks, split

#: parameter counts do not depend on how neurons are paired or merged: the cheapest zip. (``share`` as
#: :class:`Counts` is neuron counts per layer group, as a budget passes them.)
COUNT_ONLY = dict(quiet=True, loss_aware=False, recover=False, matching="index", hessian="identity")


SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def floats(model: onnx.ModelProto) -> int:
    """Float parameters stored in a model, counted by hand: initializers and Constant nodes."""
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node if n.op_type == "Constant"
                                               for a in n.attribute if a.name == "value"]
    return sum(numpy_helper.to_array(t).size for t in tensors if t.data_type == onnx.TensorProto.FLOAT)


def aligned(models, data):
    _, irs, arrays = load_tasks(models, [f"t{i}" for i in range(len(models))], data)
    return align(irs), arrays


def run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


# ----------------------------------------------------------------------- saving_model

@pytest.mark.parametrize("make", [graphs.mlp, graphs.resnet, graphs.inception, graphs.mobilenet],
                         ids=["mlp", "resnet", "inception", "mobilenet"])
def test_saving_model_equals_the_parameters_counted_in_the_emitted_model(make):
    """Plain chain, residual groups (tied layers, a projection), Concat (a space from blocks) and
    depthwise followers: one more shared neuron in group g removes exactly saving(k)[g] floats."""
    models = [make(1), make(2)]
    shape = (12,) if make is graphs.mlp else (3, 8, 8)
    data = [{"x": graphs.data(3, shape)}, {"x": graphs.data(4, shape)}]
    irs, _ = aligned(models, data)
    groups = irs[0].spaces.groups
    sizes = np.array([min(ir.layers[g[0]].neurons for ir in irs) for g in groups])
    saving = saving_model(irs, groups)
    bases = [sizes // 2] + ([np.zeros_like(sizes)] if make is graphs.mlp else [])
    for base in bases:
        at = floats(zip_models(models, data, share=Counts(int(v) for v in base), **COUNT_ONLY).model)
        for g in range(len(groups)):
            k = base.copy()
            k[g] += 1
            one_more = floats(zip_models(models, data, share=Counts(int(v) for v in k), **COUNT_ONLY).model)
            assert at - one_more == saving(base)[g], (base, g)


def test_saving_model_of_a_plain_chain_by_the_closed_form():
    """MLP 12-16-10-3, two tasks: one more shared fc0 neuron stores once its 12 weights, its bias and
    the weight each of fc1's k1 shared neurons has on it; one more shared fc1 neuron its weights on
    fc0's k0 shared channels and its bias (the head reads fc1 privately)."""
    models = [graphs.mlp(1), graphs.mlp(2)]
    data = [{"x": graphs.data(3, (12,))}, {"x": graphs.data(4, (12,))}]
    irs, _ = aligned(models, data)
    saving = saving_model(irs, irs[0].spaces.groups)
    for k0, k1 in itertools.product(range(0, 17, 4), range(0, 11, 5)):
        np.testing.assert_array_equal(saving(np.array([k0, k1])), [12 + 1 + k1, k0 + 1])


def test_saving_model_of_three_tasks_counts_two_copies_saved():
    models = [graphs.mlp(s) for s in (1, 2, 3)]
    data = [{"x": graphs.data(s, (12,))} for s in (4, 5, 6)]
    irs, _ = aligned(models, data)
    saving = saving_model(irs, irs[0].spaces.groups)
    np.testing.assert_array_equal(saving(np.array([4, 5])), [2 * (12 + 1 + 5), 2 * (4 + 1)])
    at = floats(zip_models(models, data, share=Counts((4, 5)), **COUNT_ONLY).model)
    assert at - floats(zip_models(models, data, share=Counts((5, 5)), **COUNT_ONLY).model) == 2 * (12 + 1 + 5)
    assert at - floats(zip_models(models, data, share=Counts((4, 6)), **COUNT_ONLY).model) == 2 * (4 + 1)


# ----------------------------------------------------------------------- allocate

def brute_force(costs, per_slot):
    """Every count vector: (counts, parameters saved, predicted cost)."""
    rows = []
    for k in itertools.product(*[range(len(c) + 1) for c in costs]):
        rows.append((k, sum(n * s for n, s in zip(k, per_slot)), sum(float(c[:n].sum()) for c, n in zip(costs, k))))
    return rows


def tiny_problem(seed: int, equal: bool = False):
    rng = np.random.default_rng(seed)
    costs = [np.sort(rng.uniform(0, 1, n)) for n in (3, 4, 2)]
    per_slot = np.full(3, 5) if equal else rng.integers(1, 10, 3)
    return costs, per_slot, lambda k: per_slot.astype(float)


@pytest.mark.parametrize("seed", range(6))
def test_allocate_meets_the_target_and_no_count_vector_saves_as_much_for_less(seed):
    costs, per_slot, saving = tiny_problem(seed)
    total = 100
    every = brute_force(costs, per_slot)
    full = [len(c) for c in costs]
    for target in np.linspace(0.5, 1.0, 11):
        counts, spent = allocate(costs, saving, total, Budget(target_params=float(target)))
        saved = sum(n * s for n, s in zip(counts, per_slot))
        assert spent == pytest.approx(sum(float(c[:n].sum()) for c, n in zip(costs, counts)), abs=1e-12)
        assert total - saved <= target * total + 1e-9 or counts == full
        # greedy by cost per parameter takes a prefix of the slots sorted by that ratio: nothing the
        # brute force finds saves at least as many parameters for a lower predicted cost
        assert all(cost >= spent - 1e-12 for _, s, cost in every if s >= saved)
        # and it stops as soon as the target is met: without its last slot (of some group) it would miss it
        if any(counts):
            assert any(total - (saved - per_slot[g]) > target * total for g, n in enumerate(counts) if n)
        else:
            assert target * total >= total


@pytest.mark.parametrize("seed", range(4))
def test_allocate_with_equal_savings_is_the_brute_force_optimum(seed):
    costs, per_slot, saving = tiny_problem(seed, equal=True)
    total = 60
    every = brute_force(costs, per_slot)
    for target in (0.95, 0.8, 0.6, 0.5, 0.3, 0.2):
        counts, spent = allocate(costs, saving, total, Budget(target_params=target))
        feasible = [cost for _, s, cost in every if total - s <= target * total]
        if feasible:
            assert spent == pytest.approx(min(feasible), abs=1e-12)
        else:  # out of reach: everything shared
            assert counts == [len(c) for c in costs]


@pytest.mark.parametrize("seed", range(4))
def test_allocate_under_a_cost_cap(seed):
    costs, per_slot, saving = tiny_problem(seed)
    every = brute_force(costs, per_slot)
    cheapest_each = sorted(c[0] for c in costs)
    for cap in (0.0, cheapest_each[0] / 2, 0.5, 1.0, 2.0, 100.0):
        counts, spent = allocate(costs, saving, 100, Budget(max_cost=cap))
        assert spent <= cap + 1e-12
        assert spent == pytest.approx(sum(float(c[:n].sum()) for c, n in zip(costs, counts)), abs=1e-12)
        saved = sum(n * s for n, s in zip(counts, per_slot))
        assert all(cost >= spent - 1e-12 for _, s, cost in every if s >= saved)
        if cap < cheapest_each[0]:
            assert counts == [0, 0, 0]
        if cap >= sum(float(c.sum()) for c in costs):
            assert counts == [len(c) for c in costs]


# ----------------------------------------------------------------------- predict_costs

def test_predict_costs_are_the_mtz_pair_costs_of_the_best_full_matching():
    """MLP 6-5-4-3, exact Hessians, no loss weights: group 0's and group 1's slot costs re-derived in
    numpy (H = [x 1]'[x 1] / N damped by 0.01 mean diag; cost 1/2 (a-b)' H_A (H_A+H_B)^-1 H_B (a-b))
    and matched by brute force over every permutation; group 1 reads the originals' fc0 activations
    with task B's channels in the order group 0 paired them."""
    models = [graphs.mlp(1, sizes=(6, 5, 4, 3)), graphs.mlp(2, sizes=(6, 5, 4, 3))]
    data = [{"x": graphs.data(5, (6,), n=100)}, {"x": graphs.data(6, (6,), n=80)}]
    irs, arrays = aligned(models, data)
    got = predict_costs(irs, arrays, None, ZipOptions(hessian="exact", loss_aware=False, damping=0.01))

    def hessian(x):
        r = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        h = r.T @ r / len(r)
        return h + 0.01 * np.mean(np.diag(h)) * np.eye(len(h))

    def layer(m, i):
        w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
        return w[f"w{i}"], w[f"b{i}"]

    def best_matching(rows, xs):
        ha, hb = hessian(xs[0]), hessian(xs[1])
        m = ha @ np.linalg.solve(ha + hb, hb)
        c = np.array([[0.5 * (a - b) @ m @ (a - b) for b in rows[1]] for a in rows[0]])
        n = len(c)
        best = min(itertools.permutations(range(n)), key=lambda p: sum(c[i, p[i]] for i in range(n)))
        return np.array(best), np.sort([c[i, best[i]] for i in range(n)])

    xs = [d["x"].astype(np.float64) for d in data]
    rows0 = [np.concatenate([w, b[:, None]], axis=1) for w, b in (layer(m, 0) for m in models)]
    pairing, want0 = best_matching(rows0, xs)
    np.testing.assert_allclose(got[0], want0, rtol=1e-5)
    h0 = [np.maximum(x @ w.T + b, 0) for x, (w, b) in zip(xs, (layer(m, 0) for m in models))]
    h0[1] = h0[1][:, pairing]
    rows1 = [np.concatenate([w, b[:, None]], axis=1) for w, b in (layer(m, 1) for m in models)]
    rows1[1] = np.concatenate([rows1[1][:, pairing], rows1[1][:, -1:]], axis=1)
    _, want1 = best_matching(rows1, h0)
    np.testing.assert_allclose(got[1], want1, rtol=1e-5)


# ----------------------------------------------------------------------- the budget path of zip_models

MLP = (12, 16, 10, 3)


def mlp_pair():
    models = [graphs.mlp(1, sizes=MLP), graphs.mlp(2, sizes=MLP)]
    data = [{"x": graphs.data(5, (12,), n=128)}, {"x": graphs.data(6, (12,), n=128)}]
    return models, data


def chain_floats(counts) -> int:
    """Two MLP 12-16-10-3 tasks zipped with ``counts`` shared neurons per hidden layer, by hand:
    each layer stored twice, less one copy of each shared neuron's weights on shared inputs and bias."""
    per_task = sum(a * b + b for a, b in zip(MLP[:-1], MLP[1:]))
    k0, k1 = counts
    return 2 * per_task - k0 * (MLP[0] + 1) - k1 * (k0 + 1)


@pytest.mark.parametrize("target", [0.5, 0.7, 0.9])
def test_a_budgeted_zip_keeps_at_most_its_target_counted_by_hand(target):
    models, data = mlp_pair()
    total = sum(floats(m) for m in models)
    assert total == chain_floats((0, 0)) == 822  # no other parameters: the layers are the budget
    result = zip_models(models, data, quiet=True, names=("a", "b"), target_params=target)
    rep, budget = result.report, result.report["budget"]
    kept = floats(result.model)
    counts = budget["counts"]
    assert counts == [row["shared"] for row in rep["layers"]]
    assert kept == chain_floats(counts) == rep["params_after"] and rep["params_before"] == total
    assert budget["target_params"] == target and budget["max_cost"] is None
    tries = budget["backoff"] or [{"target_params": target, "counts": counts, "params_kept": kept / total,
                                   "fits": True}]
    assert tries[-1]["counts"] == counts and tries[-1]["params_kept"] == pytest.approx(kept / total)
    assert 1 <= len(tries) <= 4
    expected = target
    for i, t in enumerate(tries):  # each try loosens the last halfway to keeping everything
        assert t["target_params"] == pytest.approx(expected)
        assert t["params_kept"] == pytest.approx(chain_floats(t["counts"]) / total)
        all_shared = t["counts"] == [MLP[1], MLP[2]]
        assert t["params_kept"] <= t["target_params"] or all_shared  # met, or nothing left to share
        assert t["fits"] is (i == len(tries) - 1) or len(tries) == 4
        expected = (1 + expected) / 2
    if tries[-1]["fits"]:
        assert all(row["verdict"] == "ok" for row in rep["tasks"])
    if target == 0.5:  # sharing everything keeps 444 of 822 (the heads stay private): not reachable
        assert tries[0]["counts"] == [16, 10] and tries[0]["params_kept"] == pytest.approx(444 / 822)


def held_out_kl(zipped, models, data, names, x="x", y="y") -> list[float]:
    """Each task's mean KL(original || zipped) over its held-out samples, run in ONNX Runtime
    (the oracle for the report's measured loss: numpy, not onnxzip's output_loss)."""
    out = []
    for m, d, name in zip(models, data, names):
        _, held = split(len(d[x]), 0.2)
        feeds = {x: d[x][held]}
        o, z = run(m, feeds)[y], run(zipped, feeds)[f"{name}/{y}"]
        p, q = (np.exp(v - v.max(1, keepdims=True)) for v in (o, z))
        p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
        out.append(float(np.mean(np.sum(p * np.log(p / q), axis=1))))
    return out


def test_a_loss_cap_is_met_as_measured_on_held_out_samples():
    """``--max-loss-increase`` is in measured units: the zip kept measures within the cap on the held-out
    samples (KL recomputed here from ONNX Runtime runs), each try over the cap is redone at a lower cost
    cap, and the loss scale reads every try's predicted cost in the measured units."""
    models, data = mlp_pair()
    cap = 0.05  # (its first try, everything shared, measures within the cap but one task degraded)
    result = zip_models(models, data, quiet=True, names=("a", "b"), max_loss_increase=cap)
    budget = result.report["budget"]
    assert budget["max_loss_increase"] == cap and budget["target_params"] is None
    tries = budget["backoff"] or [budget | {"max_cost": budget["max_cost"], "fits": True}]
    assert tries[0]["max_cost"] == cap  # the first try reads the costs as loss
    for before, after in zip(tries, tries[1:]):  # over: a lower cap; within with room: a higher one
        if before["fits"]:
            assert after["max_cost"] > before["predicted_cost"]
        else:
            assert after["max_cost"] <= 0.9 * before["predicted_cost"] + 1e-12
    fitting = [t for t in tries if t["fits"]]
    assert budget["counts"] == min(fitting, key=lambda t: t["params_kept"])["counts"]
    for t in tries:
        assert t["predicted_cost"] <= t["max_cost"] + 1e-12
    kl = held_out_kl(result.model, models, data, ("a", "b"))
    assert sum(kl) == pytest.approx(budget["measured_loss"], rel=1e-3, abs=1e-7)
    assert sum(kl) <= cap and any(budget["counts"])  # met, and something is shared
    scale = budget["loss_scale"]
    assert scale["zips"] >= 1
    assert budget["predicted_loss"] == pytest.approx(scale["scale"] * budget["predicted_cost"] ** scale["power"])
    assert floats(result.model) == chain_floats(budget["counts"]) == result.report["params_after"]


def test_a_target_and_a_loss_cap_together_keep_a_zip_within_both():
    """The zip kept, also after the comparison with uniform and full sharing, measures within the cap
    (KL recomputed here): the allocation stops at the target or where the cap binds, whichever first."""
    models, data = mlp_pair()
    result = zip_models(models, data, quiet=True, names=("a", "b"), target_params=0.6, max_loss_increase=0.002)
    budget = result.report["budget"]
    assert sum(held_out_kl(result.model, models, data, ("a", "b"))) <= 0.002
    assert floats(result.model) < sum(floats(m) for m in models)  # (something is shared)
    assert all(t["fits"] is (t["measured_loss"] <= 0.002 and t["fits"]) for t in budget["compared"])


def test_a_loss_cap_holds_where_the_costs_underpredict_by_orders_of_magnitude():
    """The sample CNN pair: its Fisher costs predict ~1e-6 where sharing everything measures ~0.3 nats (two
    confident classifiers). The first try shares everything; the scale fitted on it brings the
    zip kept within the cap, as measured on the held-out samples (KL recomputed here)."""
    models = [str(SAMPLES / f"cnn_{t}.onnx") for t in ("digit", "parity")]
    data = [dict(np.load(SAMPLES / f"calib_{t}.npz")) for t in ("digit", "parity")]
    result = zip_models(models, data, quiet=True, names=("digit", "parity"), max_loss_increase=0.05)
    budget = result.report["budget"]
    first = budget["backoff"][0]
    assert first["measured_loss"] > 0.05 and first["measured_loss"] > 1e3 * first["predicted_cost"]
    kl = held_out_kl(result.model, [onnx.load(m) for m in models], data, ("digit", "parity"), "image", "logits")
    assert sum(kl) == pytest.approx(budget["measured_loss"], rel=1e-3) and sum(kl) <= 0.05
    assert result.report["params_after"] < 0.75 * result.report["params_before"]  # and it still shares


def test_the_loss_scale_recovers_a_power_law():
    law = [(c, 3e4 * c ** 1.5) for c in (1e-6, 4e-6, 2e-5)]
    fitted = fit_loss_scale(law + [(0.0, 0.1), (1e-5, 0.0)])  # (points without both positive are left out)
    assert fitted.zips == 3 and fitted.power == pytest.approx(1.5) and fitted.scale == pytest.approx(3e4)
    assert fitted.cost(fitted.loss(7e-6)) == pytest.approx(7e-6)
    one = fit_loss_scale([(2e-6, 0.3)])
    assert one.power == 1.0 and one.loss(1e-6) == pytest.approx(0.15)
    assert fit_loss_scale([(1e-6, 1e-3), (1e-5, 1e10)]).power == POWER_RANGE[1]  # clipped
    assert fit_loss_scale([(0.0, 0.2)]) is None


def test_a_try_over_the_loss_cap_is_redone_where_the_scale_measures_the_cap():
    over = [BudgetTry(None, 1.0, [4], 1e-6, 0.3, 0.6, False)]  # predicted 1e-6, measured 0.3 (power 1)
    assert _next_cap(over, 0.03, within=False) == pytest.approx(1e-7)
    assert _next_cap(over, 0.29, within=False) == pytest.approx(0.9e-6)  # never above 0.9 of the last
    assert _next_cap(over, 0.5, within=True) == pytest.approx(0.5e-6)  # within, a task not ok: half


@pytest.mark.parametrize("budget", [dict(max_loss_increase=1e-9), dict(target_params=0.55)])
def test_a_model_zipped_with_itself_shares_everything_and_still_computes_the_original(budget):
    """Identical neurons merge at no cost: every hidden neuron is shared (a target of 0.55 needs them all:
    444 of 822 parameters kept), the hidden layers are stored once (the heads twice), and each task's
    output is the original's, run in ONNX Runtime."""
    m = graphs.mlp(1, sizes=MLP)
    _, data = mlp_pair()
    result = zip_models([m, m], data, quiet=True, names=("a", "b"), **budget)
    assert result.report["budget"]["counts"] == [16, 10] and result.report["budget"]["backoff"] == []
    head = MLP[2] * MLP[3] + MLP[3]
    assert floats(result.model) == floats(m) + head == chain_floats((16, 10))
    x = graphs.data(9, (12,), n=32)
    want = run(m, {"x": x})["y"]
    got = run(result.model, {"x": x})
    for t in ("a", "b"):
        np.testing.assert_allclose(got[f"{t}/y"], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.xfail(strict=True, reason="the budget's saving model counts --favor size storage; --favor speed "
                   "stores the shared blocks again per task, so --target-params is missed (measured: 0.6 -> "
                   "0.84 of the parameters kept on the sample MLP pair) and nothing says so")
def test_a_budget_under_favor_speed_keeps_at_most_its_target():
    models, data = mlp_pair()
    total = sum(floats(m) for m in models)
    result = zip_models(models, data, quiet=True, names=("a", "b"), target_params=0.7, favor="speed")
    tries = result.report["budget"]["backoff"]
    target = tries[-1]["target_params"] if tries else 0.7
    assert floats(result.model) <= target * total


def test_a_budget_without_held_out_samples_says_it_is_untested(caplog):
    models, data = mlp_pair()
    few = [{"x": d["x"][:8]} for d in data]
    result = zip_models(models, few, quiet=True, names=("a", "b"), max_loss_increase=0.05)
    assert any("judges its zips on the samples they were fitted to" in r.getMessage() for r in caplog.records)
    assert result.report["budget"]["max_loss_increase"] == 0.05
