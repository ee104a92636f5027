"""Progress without a terminal: a line per interval with the count, the time so far and an ETA."""


def test_progress_lines_without_a_terminal(monkeypatch, capsys):
    from onnxzip import progress
    monkeypatch.setattr(progress, "PROGRESS_EVERY", 0.0)
    assert list(progress.progress(range(4), "zipping layers", quiet=False)) == [0, 1, 2, 3]
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"onnxzip: zipping layers {i}/4" for i in (1, 2, 3)]
    assert all("s to go" in line for line in lines)
    assert list(progress.progress(range(4), "zipping layers", quiet=True)) == [0, 1, 2, 3]
    assert capsys.readouterr().err == ""


def test_the_eta_scales_the_time_so_far_by_the_work_left(monkeypatch, capsys):
    """Items of weights 1, 1, 8: after the first two (2 s on a fake clock, 2 of 10 units done) the
    ETA is 2 s x 8 / 2 = 8 s, where counting items would say 1 s."""
    from onnxzip import progress
    clock = iter([0.0, 0.5, 1.0, 2.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(progress, "PROGRESS_EVERY", 0.0)
    assert list(progress.progress(["a", "b", "c"], "zipping layers", False, [1, 1, 8])) == ["a", "b", "c"]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["onnxzip: zipping layers 1/3, 1 s, about 9 s to go",
                     "onnxzip: zipping layers 2/3, 2 s, about 8 s to go"]


def test_a_zip_says_each_phase_as_it_starts(capsys):
    import numpy as np
    from conftest import SAMPLES

    from onnxzip import zip_models
    zip_models([SAMPLES / "mlp_digit.onnx", SAMPLES / "mlp_parity.onnx"], [dict(np.load(SAMPLES / "calib_digit.npz"))],
               share=0.5)
    said = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("onnxzip: zipping layers")]
    assert said[:5] == ["onnxzip: loading, normalizing and aligning the models",
                        "onnxzip: running the originals on the data",
                        "onnxzip: loss statistics (gradients through ONNX Runtime)",
                        "onnxzip: writing the zipped graph",
                        "onnxzip: checking the zipped model against the originals"]
