"""Phase seconds: collected only inside record(), each second in one phase (nested ones apart)."""
import time

import pytest

from onnxzip import timing


def test_phases_add_wall_time_inside_record_only():
    with timing.phase("outside"):
        pass
    with timing.record() as phases:
        with timing.phase("outer"):
            time.sleep(0.03)
            with timing.phase("inner"):
                time.sleep(0.05)
        with timing.phase("inner"):
            time.sleep(0.02)
    assert set(phases) == {"outer", "inner"}
    assert phases["inner"] >= 0.07 and 0.03 <= phases["outer"] < 0.05  # outer's own time only


def test_a_zip_reports_its_phases_and_peak_memory():
    import graphs

    from onnxzip import zip_models
    result = zip_models([graphs.mlp(0), graphs.mlp(1)], [{"x": graphs.data(s, (12,))} for s in (0, 1)],
                        share=0.5, quiet=True)
    phases = result.report["phases"]
    assert {"load", "originals", "statistics", "matching", "merge", "emit", "verify", "layer check"} <= set(phases)
    assert sum(phases.values()) <= result.report["seconds"] * 1.01 + 0.01
    assert result.report["peak_rss_mb"] > 10


def test_the_report_sets_the_zip_time_against_the_runtime_floor_and_the_statistics_arithmetic():
    """The floor is the originals' pass; the arithmetic bound counts X'X (its symmetric half) of every
    dense statistic: the sample MLP's two hidden layers (64 and 300 inputs, a bias column each) over
    its 205 fitted samples in each of two tasks, computed here from the layer sizes alone (no cross
    moments without recovery)."""
    from conftest import SAMPLES

    from onnxzip import zip_models
    from onnxzip.report.terminal import format_table
    models = [str(SAMPLES / f"mlp_{t}.onnx") for t in ("digit", "parity")]
    calib = [str(SAMPLES / f"calib_{t}.npz") for t in ("digit", "parity")]
    result = zip_models(models, calib, share=0.5, quiet=True, recover=False)
    floor, report = result.summary.floor, result.summary
    assert report.samples == [205, 205]
    assert floor.statistics_gflop * 1e9 == pytest.approx(2 * 205 * (65 * 66 / 2 + 301 * 302 / 2))
    assert floor.originals_seconds == pytest.approx(report.phases["originals"], abs=1e-3)
    assert floor.seconds == report.seconds and floor.gemm_gflops > 0.1
    assert floor.bound_seconds == pytest.approx(floor.statistics_gflop / floor.gemm_gflops, rel=1e-2)
    assert any(line.startswith("time ") and "the ONNX Runtime floor" in line for line in format_table(report).splitlines())


def test_the_peak_memory_is_put_on_the_innermost_phase_that_raised_it(monkeypatch):
    from onnxzip import timing
    rss = iter([100.0, 100.0, 300.0, 300.0, 250.0, 300.0])  # record start; then each phase's end
    monkeypatch.setattr(timing, "peak_rss_mb", lambda: next(rss))
    with timing.record() as phases:
        with timing.phase("load"):
            pass  # 100: no rise
        with timing.phase("verify"):
            with timing.phase("statistics"):
                pass  # 300: the rise, claimed by the inner phase
        # verify ends at 300: already claimed
        with timing.phase("emit"):
            pass  # 250 (a peak cannot fall; a fake one): no rise
        with timing.phase("merge"):
            pass  # 300: not above the claimed peak
        assert timing.peak_phase(phases) == "statistics"
