"""Fidelity measures, verdicts and measured loss against hand counts and independent formulas."""
import numpy as np
from scipy.special import softmax
from scipy.stats import entropy

from onnxzip.check.fidelity import Fidelity, fidelity, output_loss, verdict


def test_mask_iou_and_fired_against_hand_counts():
    o = np.array([[0.9, 0.8, 0.1, 0.0], [0.2, 0.7, 0.6, 0.1]])[:, None, :]  # (N, 1, W) maps in [0, 1]
    z = np.array([[0.9, 0.2, 0.6, 0.0], [0.2, 0.7, 0.7, 0.1]])[:, None, :]
    row = fidelity(z, o, kind="scores")
    # original positives: (0,0),(0,1),(1,1),(1,2); zipped: (0,0),(0,2),(1,1),(1,2): 3 common, 5 in the union
    assert row.mask_iou == 3 / 5 and row.fired == 1.0 and row.top1_agreement is None
    assert row.evidence == 5 and verdict(row) == "too few to judge"  # 5 positive positions
    many = fidelity(np.tile(z, (4, 1, 1)), np.tile(o, (4, 1, 1)), kind="scores")
    assert many.mask_iou == 3 / 5 and many.evidence == 20 and verdict(many) == "degraded"


def test_a_detector_that_never_fires_has_collapsed():
    o = np.array([[0.9], [0.1], [0.95], [0.0]])
    z = np.array([[0.4], [0.1], [0.45], [0.0]])
    row = fidelity(np.tile(z, (10, 1)), np.tile(o, (10, 1)), kind="scores")
    assert row.mask_iou == 0.0 and row.fired == 0.0 and row.evidence == 20 and verdict(row) == "collapsed"
    assert verdict(fidelity(z, o, kind="scores")) == "collapsed"  # fires at none of 2: more counts cannot mend it
    found = fidelity(np.array([[0.9], [0.1], [0.4], [0.0]]), o, kind="scores")  # 1 of 2 found
    assert found.mask_iou == 0.5 and found.evidence == 2 and verdict(found) == "too few to judge"
    assert fidelity(o * 0.0, o * 0.0, kind="scores").mask_iou == 1.0  # nothing to find, nothing found


def test_top1_agreement_and_relative_error():
    rng = np.random.default_rng(0)
    o = rng.normal(size=(50, 4))
    z = o.copy()
    z[:10] = z[:10, ::-1]
    row = fidelity(z, o, kind="classifier")
    assert row.top1_agreement == np.mean(z.argmax(1) == o.argmax(1))
    assert np.isclose(row.rel_err, np.sqrt(((z - o) ** 2).sum() / (o ** 2).sum()))
    assert row.evidence == 50 and verdict(row) == "degraded"  # 40 of 50 agree
    assert verdict(Fidelity(0.7, 1.0, evidence=10)) == "collapsed" and verdict(Fidelity(0.05, 1.0, evidence=10)) == "ok"
    assert verdict(Fidelity(0.05, 1.0, evidence=9)) == "too few to judge"
    few = fidelity(z[:19], o[:19], kind="classifier")
    assert few.evidence == 19 and verdict(few) == "too few to judge"  # a top-1 agreement over 19 samples


def test_output_loss_is_the_mean_kl_for_classifiers():
    rng = np.random.default_rng(1)
    o, z = rng.normal(size=(20, 5)), rng.normal(size=(20, 5))
    kl = np.mean([entropy(p, q) for p, q in zip(softmax(o, axis=1), softmax(z, axis=1))])
    assert np.isclose(output_loss(z, o), kl)
    assert np.isclose(output_loss(softmax(z, axis=1), softmax(o, axis=1)), kl)  # probabilities as given


def test_output_loss_is_half_the_squared_error_per_sample_otherwise():
    o, z = np.ones((4, 1, 3)), np.zeros((4, 1, 3))
    assert output_loss(z, o) == 0.5 * 3


def test_regression_values_in_unit_range_are_judged_by_their_error_not_by_masks():
    rng = np.random.default_rng(2)
    o = rng.uniform(0, 0.45, (30, 1))
    row = fidelity(np.full_like(o, 0.2), o)  # kind "values": no threshold makes this look fine
    assert row.mask_iou is None and row.rel_err > 0.4 and verdict(row) == "degraded"
