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
    assert not re.search(r'(src|href)="(http|//)', page)  # nothing to fetch: readable without a server
    for row in report["layers"]:
        assert row["name"] in page
    assert f"{report['params_after']:,}" in page and "TensorRT-ready" in page
    assert "shared per group" in page  # the budget's allocation
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
