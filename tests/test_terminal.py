"""onnxzip.report.terminal against hand-written lines: a ZipReport built by hand (measured and
unmeasured tasks, layers with and without a merge check, a budget that backed off, tied groups and
3-task orders, layers not shared, deployment problems, phases) and the exact text expected, each
column padded by hand (layer names at least 28 wide, task names cut at 24; numbers as the code
documents: costs .4g, errors .3g, task metrics .4g, ratios .1%); layer_errors against hand sums."""
import json

import pytest

from onnxzip.graph.lint import MAX_OPSET
from onnxzip.report.records import (
    BudgetRecord,
    BudgetTry,
    LossScale,
    Equivalence,
    GroupChoice,
    GroupRow,
    LayerError,
    LayerRow,
    NotShared,
    SizesRecord,
    TaskRow,
    ZipReport,
    to_plain,
)
from onnxzip.report.terminal import format_table, layer_errors, sizes_lines

LONG_LAYER = "stage3.block1.conv2.weighted_x"  # 30 characters: the layer column widens to it
LONG_TASK = "parity_classifier_with_a_long_name"  # cut at 24 in the task table

FOOTNOTE = ("predicted / measured: pre-activation error relative to the signal, summed over tasks; predicted by the "
            "merge, measured in ONNX Runtime (with what earlier layers passed on)")
TASK_HEADER = ("task" + " " * 24 + "rel_err" + " " * 2 + "top1_agree" + " " * 2 + "mask_iou" + " " * 2
               + "max_abs_diff  verdict")
TRT = (f"TensorRT-ready (opset <= {MAX_OPSET}, batch the only dynamic dim, constants folded, standard ops, weights "
       "as initializers): ")


def choice(order):
    return GroupChoice(order, costed_layers=1, costs={}, cost_matrix=[4, 4], shared=2, matching_seconds=0.01)


def full_report() -> ZipReport:
    return ZipReport(
        tasks=[TaskRow("digit", rel_err=0.0123456, top1_agreement=0.98766, mask_iou=None, max_abs_diff=1.5e-3,
                       verdict="ok"),
               TaskRow(LONG_TASK),  # no float output: nothing measured
               TaskRow("seg", rel_err=2.0, mask_iou=0.5, max_abs_diff=123456.0, verdict="degraded")],
        layers=[LayerRow("conv0", "conv", 8, 4, 12.3456, error=LayerError([0.1, 0.2], [0.15, 0.25], [1.0, 3.0])),
                LayerRow("fc0", "dense", 10, 0, 0.0),
                LayerRow(LONG_LAYER, "conv", 16, 8, 0.000123456, error=LayerError(None, [2e-4, 4e-4], [0.5, 0.5]))],
        params_before=1234567, params_after=617284, bytes_before=4938268, bytes_after=99999,
        equivalence=Equivalence(1.234e-6, 1e-4, 2.5e-7, "ok"),
        not_shared=[NotShared("head", "a private head"), NotShared("fc9", "its input is restored")],
        groups=[GroupRow(["stem", "b1c2"], choice(["b", "a", "c"])), GroupRow(["b1c1"], choice(["b", "a", "c"])),
                GroupRow(["b2c1"], choice(["c", "a", "b"])), GroupRow(["b2proj", "b2c2"]),
                GroupRow(["fc"], choice(["a", "b"]))],
        restored_at=["lrn1", "shuffle3"], attention=["blk0: q k v", "blk1: q k v"], samples=[64, 32, 16],
        budget=BudgetRecord([2, 3], 0.5, 0.6, None, 0.012345,
                            [BudgetTry(0.5, None, [4, 6], 0.9, 0.3, 0.5012, False),
                             BudgetTry(0.6, None, [2, 3], 0.5, 0.012345, 0.6049, True)],
                            loss_scale=LossScale(0.0246, 1.0, 2), predicted_loss=0.0123),
        deployment_problems=["opset 21 > 20", "dynamic dim H"],
        phases={"load": 0.123, "zip": 12.345}, peak_rss_mb=256.4)


def test_format_table_of_a_full_report_line_by_line():
    assert len(LONG_LAYER) == 30
    expected = [
        "layer" + " " * 27 + "neurons   shared         cost  predicted   measured",
        "conv0" + " " * 33 + "8" + " " * 8 + "4" + " " * 8 + "12.35" + " " * 6 + "0.075" + " " * 8 + "0.1",
        "fc0" + " " * 34 + "10" + " " * 8 + "0" + " " * 12 + "0" + " " * 10 + "-" + " " * 10 + "-",
        LONG_LAYER + " " * 7 + "16" + " " * 8 + "8" + " " * 4 + "0.0001235" + " " * 10 + "-" + " " * 5 + "0.0006",
        FOOTNOTE,
        "",
        "each task against its original, on held-out calibration samples:",
        TASK_HEADER,
        "digit" + " " * 23 + "0.01235" + " " * 6 + "0.9877" + " " * 9 + "-" + " " * 8 + "0.0015  ok",
        "parity_classifier_with_a" + " " * 10 + "-" + " " * 11 + "-" + " " * 9 + "-" + " " * 13 + "-  -",
        "seg" + " " * 31 + "2" + " " * 11 + "-" + " " * 7 + "0.5" + " " * 5 + "1.235e+05  degraded",
        "",
        "parameters 1,234,567 -> 617,284 (50.0%);  weight bytes 4.94 MB -> 100.0 kB",
        ("budget --target-params 0.6: shared per group [2, 3]; measured output loss increase 0.0123 per sample "
         "(summed over tasks; KL in nats for class scores, half the squared error elsewhere); 2 zips measured, "
         "loosened where tasks measured worse than asked (50.1%, 60.5% kept)"),
        ("predicted cost 0.5 (pre-activation units) -> predicted loss 0.0123, through loss = 0.0246 x cost^1.00 "
         "fitted on 2 measured zip(s)"),
        "tied group (one matching): stem, b1c2",
        "tied group (one matching): b2proj, b2c2",
        "task order chosen (groups): b -> a -> c (2); c -> a -> b (1)",
        f"calibration samples per task: digit 64, {LONG_TASK} 32, seg 16",
        "channel order restored before: lrn1, shuffle3",
        ("attention blocks (2; tied heads run on the zipped Q, K and V, whole heads shared; restored ones on each "
         "task's own order): blk0: q k v; blk1: q k v"),
        ("equivalence check (zipped model vs. per-task zipped networks): max abs diff 1.23e-06 (tolerance 0.0001, "
         "the models' own float noise 2.5e-07)  [ok]"),
        "not shared: head: a private head",
        "not shared: fc9: its input is restored",
        TRT + "no, 2 problem(s); first: opset 21 > 20",
        "seconds: load 0.1, zip 12.3; peak memory 256 MB",
    ]
    got = format_table(full_report()).split("\n")
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"line {i}"
    assert len(got) == len(expected)


def minimal_report(**given) -> ZipReport:
    return ZipReport(tasks=[TaskRow("a", rel_err=0.0, top1_agreement=1.0, max_abs_diff=0.0, verdict="ok")],
                     layers=[LayerRow("fc0", "dense", 6, 3, 1.0)], params_before=200, params_after=150,
                     bytes_before=800, bytes_after=600, **given)


def test_format_table_of_a_minimal_report_leaves_out_what_it_lacks():
    """No merge checks (no footnote), no budget, groups, samples, restore points, attention, layers not
    shared, lint or phases: only the tables, the sizes and the equivalence check."""
    assert format_table(minimal_report()).split("\n") == [
        "layer" + " " * 25 + "neurons   shared         cost  predicted   measured",
        "fc0" + " " * 33 + "6" + " " * 8 + "3" + " " * 12 + "1" + " " * 10 + "-" + " " * 10 + "-",
        "",
        "each task against its original, on held-out calibration samples:",
        TASK_HEADER,
        "a" + " " * 33 + "0" + " " * 11 + "1" + " " * 9 + "-" + " " * 13 + "0  ok",
        "",
        "parameters 200 -> 150 (75.0%);  weight bytes 0.8 kB -> 0.6 kB",
        ("equivalence check (zipped model vs. per-task zipped networks): max abs diff 0 (tolerance 0, the models' "
         "own float noise 0)  [ok]"),
    ]


def test_format_table_lint_passed_a_loss_budget_and_phases_without_peak_memory():
    report = minimal_report(deployment_problems=[], phases={"zip": 1.0},
                            budget=BudgetRecord([1], 0.1, None, 0.01, 1.5e-5, max_loss_increase=0.25),
                            groups=[GroupRow(["fc0"], choice(["b", "a"]))], samples=[10],
                            equivalence=Equivalence(3e-3, 1e-4, 1e-6, "mismatch"))
    lines = format_table(report).split("\n")
    assert lines[7:] == [
        "parameters 200 -> 150 (75.0%);  weight bytes 0.8 kB -> 0.6 kB",
        ("budget --max-loss-increase 0.25: shared per group [1]; measured output loss increase 1.5e-05 per sample "
         "(summed over tasks; KL in nats for class scores, half the squared error elsewhere)"),
        "calibration samples per task: a 10",  # (a two-task order is not listed)
        ("equivalence check (zipped model vs. per-task zipped networks): max abs diff 0.003 (tolerance 0.0001, "
         "the models' own float noise 1e-06)  [mismatch]"),
        TRT + "yes",
        "seconds: zip 1.0; peak memory 0 MB",
    ]


@pytest.mark.parametrize("n,text", [(0, "0.0 kB"), (999, "1.0 kB"), (99_949, "99.9 kB"), (100_000, "0.10 MB"),
                                    (12_345_678, "12.35 MB"), (2_000_000_000, "2000.00 MB")])
def test_weight_bytes_in_kb_below_100_kb_else_mb(n, text):
    report = minimal_report()
    report.bytes_before = report.bytes_after = n
    assert format_table(report).split("\n")[7] == f"parameters 200 -> 150 (75.0%);  weight bytes {text} -> {text}"


# ------------------------------------------------------------------ layer_errors

def test_layer_errors_are_sums_over_tasks_relative_to_the_summed_signal():
    row = LayerRow("l", "conv", 4, 2, 0.0, error=LayerError([0.1, 0.2], [0.15, 0.25], [1.0, 3.0]))
    pred, meas = layer_errors(row)
    assert pred == pytest.approx(0.3 / 4.0, rel=1e-15) and meas == pytest.approx(0.4 / 4.0, rel=1e-15)
    row.error = LayerError([1.0, 2.0, 3.0], [0.5, 0.5, 2.0], [10.0, 0.0, 2.0])  # three tasks
    pred, meas = layer_errors(row)
    assert pred == pytest.approx(0.5, rel=1e-15) and meas == pytest.approx(0.25, rel=1e-15)


def test_layer_errors_unknown_parts_are_none():
    row = LayerRow("l", "dense", 4, 2, 0.0)
    assert layer_errors(row) == (None, None)
    row.error = LayerError(None, [0.3, 0.1], [2.0, 2.0])
    pred, meas = layer_errors(row)
    assert pred is None and meas == pytest.approx(0.1, rel=1e-15)


def test_layer_errors_of_a_zero_signal_stay_finite_where_the_error_is_zero():
    row = LayerRow("l", "dense", 4, 2, 0.0, error=LayerError([0.0, 0.0], [0.0, 0.0], [0.0, 0.0]))
    assert layer_errors(row) == (0.0, 0.0)


def test_the_sizes_lines_say_what_is_open_and_the_profile_the_checks_cover():
    sizes = SizesRecord({"x": {2: "H", 3: "W"}}, {"x": [26, 3, 320, 320]}, {"x": [26, 3, 480, 416]}, [2e-6, None], True)
    assert sizes_lines(sizes, 8) == [
        ("input sizes: open as in the originals (x axes 2 (H), 3 (W)); run at {'x': [26, 3, 480, 416]} beside the "
         "originals: relative error per task 2e-06, -"),
        "TensorRT optimization profile the checks cover: x min [1, 3, 320, 320] opt [8, 3, 320, 320] max [8, 3, 480, 416]"]
    back = SizesRecord.from_dict(json.loads(json.dumps(to_plain(sizes))))
    assert back == sizes  # (axis keys come back as ints)
    fixed = SizesRecord({"x": {2: "H"}}, {"x": [4, 3, 8, 8]}, {"x": [4, 3, 12, 8]}, [], False, "why")
    assert sizes_lines(fixed, 8) == ["input sizes: fixed to the calibration data's (why)"]


def test_a_budget_with_a_target_and_a_loss_cap_says_both():
    report = minimal_report(budget=BudgetRecord([1], 0.1, 0.6, 0.01, 1.5e-5, max_loss_increase=0.25))
    assert any(line.startswith("budget --target-params 0.6 --max-loss-increase 0.25: shared per group [1]")
               for line in format_table(report).split("\n"))


def test_the_matching_line_says_where_sparse_certified_pairs_were_used():
    from onnxzip.sharing.assign import CERTIFIED, DENSE
    report = full_report()
    assert not any(line.startswith("matched by") for line in format_table(report).splitlines())  # (no method given)
    sparse = GroupChoice(["a", "b"], 1, {}, [3072, 3072], 1536, 3.25, CERTIFIED)
    dense = GroupChoice(["a", "b"], 1, {}, [64, 64], 32, 0.5, DENSE)
    none = GroupChoice(["a", "b"], 1, {}, [64, 64], 0, 0.0, DENSE)
    report.groups = [GroupRow(["f1"], sparse), GroupRow(["f2"], sparse), GroupRow(["q"], dense), GroupRow(["o"], none)]
    lines = [line for line in format_table(report).splitlines() if line.startswith("matched by")]
    assert lines == [f"matched by: {CERTIFIED} (2 groups, 6.5 s); {DENSE} (1 group, 0.5 s)"]
    report.groups = [GroupRow(["q"], dense)]
    assert not any(line.startswith("matched by") for line in format_table(report).splitlines())
    old = {"layers": ["q"], "order": ["a", "b"], "costed_layers": 1, "costs": {}, "cost_matrix": [4, 4], "shared": 2,
           "matching_seconds": 0.1}  # (a report written before the method was recorded)
    assert GroupRow.from_dict(old).choice.matching == ""
    assert GroupRow.from_dict(json.loads(json.dumps(to_plain(GroupRow(["f1"], sparse))))).choice == sparse
