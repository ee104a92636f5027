"""Phase seconds: collected only inside record(), each second in one phase (nested ones apart)."""
import time

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
