"""The HTML report: one self-contained page with the numbers of the JSON report and inline plots."""
import json
import re

import pytest
from conftest import SAMPLES

from onnxzip import zip_models
from onnxzip.cli import main
from onnxzip.report.records import ZipReport

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def report():
    r = zip_models([str(SAMPLES / "cnn_digit.onnx"), str(SAMPLES / "cnn_parity.onnx")],
                   [str(SAMPLES / "calib_digit.npz"), str(SAMPLES / "calib_parity.npz")], target_params=0.7,
                   quiet=True, names=("digit", "parity"))
    return r.report


def test_zip_writes_html_and_json(report, tmp_path, capsys):
    out = tmp_path / "r.html"
    from onnxzip.report.files import write_report
    write_report(ZipReport.from_dict(report), out)
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count("<svg") >= 3  # tasks, layers, predicted vs measured
    assert "The zipped model's inputs: image (batch, 1, 8, 8)" in page
    assert not re.search(r'(src|href)="(http|//)', page)  # nothing to fetch: readable without a server
    for row in report["layers"]:
        assert row["name"] in page
    assert f"{report['params_after']:,}" in page and "TensorRT-ready" in page
    assert "shared per group" in page  # the budget's allocation
    kept = report["params_after"] / report["params_before"]
    assert f"{100 * kept:.1f}% kept" + (" (not reached)" if kept > 0.7 + 0.005 else "") in page
    for t in ("digit", "parity"):
        assert t in page


def test_cli_report_renders_a_json_report(report, tmp_path, capsys):
    src = tmp_path / "r.json"
    src.write_text(json.dumps(report))
    assert main(["report", str(src), "-o", str(tmp_path / "r.html"), "-q"]) == 0
    assert (tmp_path / "r.html").read_text().count("<svg") >= 3
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["report", str(tmp_path / "bad.json"), "-o", str(tmp_path / "b.html")]) == 2
    assert "cannot read the JSON report" in capsys.readouterr().err
    assert not (tmp_path / "b.html").exists()


def test_names_are_text_not_markup(report, tmp_path):
    """Layer and task names come from the files: escaped in the page, no math text in the plots."""
    import copy

    from onnxzip.report.files import write_report
    evil = copy.deepcopy(report)
    evil["layers"][0]["name"] = "<span><img src=x onerror=alert(1)>"
    evil["layers"][1]["name"] = "enc/$\\frac{a$/x"
    evil["tasks"][0]["name"] = "<script>alert(1)</script>"
    write_report(ZipReport.from_dict(evil), tmp_path / "sub" / "e.html")  # (a missing folder is made)
    page = (tmp_path / "sub" / "e.html").read_text()
    assert "<img src=x" not in page and "<script>alert" not in page and "&lt;span&gt;&lt;img" in page


def test_the_json_report_reads_back_as_the_same_records(report):
    """JSON -> records -> JSON keeps every key and value (the report's schema is its records)."""
    text = json.dumps(report)
    again = ZipReport.from_dict(json.loads(text)).to_dict()
    assert json.loads(json.dumps(again)) == json.loads(text)
    assert set(report) >= {"tasks", "layers", "params_before", "params_after", "bytes_before", "bytes_after",
                           "equivalence", "equivalence_max_abs_diff", "not_shared", "groups", "samples", "budget",
                           "deployment_problems", "options", "inputs", "cost_units", "seconds", "phases"}


def test_a_60_layer_report_fits_the_page():
    """Every chart is at most the page's width (and scales down inside it), names at most MAX_TICKS layers,
    keeps its cost axis within COST_RANGE of the largest cost (a 1e-41 does not stretch it), and 18 layers
    not shared for one reason are one line."""
    from onnxzip.report.page import COST_RANGE, MAX_TICKS, render
    from onnxzip.report.records import Equivalence, LayerRow, NotShared, TaskRow
    layers = [LayerRow(f"stage{i // 10}.block{i % 10}.conv", "conv", 64, 32, 10.0 ** -(i % 7) if i else 3.8e-41)
              for i in range(60)]
    rep = ZipReport(tasks=[TaskRow("a", rel_err=0.01, top1_agreement=0.99, max_abs_diff=0.1, verdict="ok")],
                    layers=layers, params_before=10, params_after=5, bytes_before=40, bytes_after=20,
                    equivalence=Equivalence(1e-6, 1e-4, 1e-7, "ok"),
                    not_shared=[NotShared(f"l{i}", "the budget shares none here") for i in range(18)])
    page = render(rep)
    svgs = re.findall(r"<svg [^>]*>", page)
    assert svgs and all('style="max-width:100%;height:auto"' in s for s in svgs)
    widths = [float(re.search(r'width="([0-9.]+)pt"', s).group(1)) for s in svgs]
    assert max(widths) <= 1100 * 0.75 + 60  # (the page's 1100 px column in points, and the labels' overhang)
    charts = "".join(re.findall(r"<svg .*?</svg>", page, re.S))
    named = re.findall(r">(stage\d\.block\d\.conv)<", charts)  # (the chart's text stays text)
    assert 0 < len(named) <= MAX_TICKS and named[:2] == ["stage0.block0.conv", "stage0.block2.conv"]
    assert page.count("Not shared:") == 1
    assert "Not shared: l0, l1, l2 and 15 more (18 layers): the budget shares none here" in page
    assert MAX_TICKS < 60 and COST_RANGE > 1e-20


def test_the_fidelity_chart_names_each_task_s_metric():
    from onnxzip.report.page import render
    from onnxzip.report.records import Equivalence, TaskRow
    rep = ZipReport(tasks=[TaskRow("cls", rel_err=0.1, top1_agreement=0.98, verdict="ok"),
                           TaskRow("det", rel_err=0.2, mask_iou=0.9, verdict="ok"),
                           TaskRow("reg", rel_err=0.05, verdict="ok")],
                    layers=[], params_before=10, params_after=5, bytes_before=40, bytes_after=20,
                    equivalence=Equivalence(1e-6, 1e-4, 1e-7, "ok"))
    charts = "".join(re.findall(r"<svg .*?</svg>", render(rep), re.S))
    for label in ("cls (top-1 agreement)", "det (mask IoU)", "reg (1 - relative error)",
                  "each task&#39;s metric (beside its name)"):
        assert label in charts or label.replace("&#39;", "'") in charts, label


def test_groups_are_numbered_as_the_layer_rows_number_them(report):
    assert report["groups"]
    rows = {r["name"]: r for r in report["layers"]}
    for g in report["groups"]:
        assert all(rows[name]["group"] == g["index"] for name in g["layers"])
    back = ZipReport.from_dict(json.loads(json.dumps(report)))
    assert [g.index for g in back.groups] == [g["index"] for g in report["groups"]]
