"""Progress without a terminal: a line per interval with the count, the time so far and an ETA."""
import pytest


def test_progress_lines_without_a_terminal(monkeypatch, capsys):
    from onnxzip import progress
    monkeypatch.setattr(progress, "PROGRESS_EVERY", 0.0)
    assert list(progress.progress(range(4), "zipping layers", quiet=False)) == [0, 1, 2, 3]
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"onnxzip: zipping layers {i}/4" for i in (0, 1, 2, 3)]
    assert all("s to go" in line for line in lines[1:])  # (items alike: the mean so far from the first)
    assert list(progress.progress(range(4), "zipping layers", quiet=True)) == [0, 1, 2, 3]
    assert capsys.readouterr().err == ""


def test_progress_lines_of_uneven_items(monkeypatch, capsys):
    """A start line; items of unequal work get no ETA until FIT_AFTER are done, then the mean seconds
    per item so far times the items left."""
    from onnxzip import progress
    clock = iter(float(t) for t in range(8))
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(progress, "PROGRESS_EVERY", 0.0)
    items = list("abcdef")
    assert progress.FIT_AFTER == 4
    assert list(progress.progress(items, "zipping layers", False, uneven=True)) == items
    assert capsys.readouterr().err.strip().splitlines() == [  # (the clock: 0 at the start, then 2, 3, ... s)
        "onnxzip: zipping layers 0/6", "onnxzip: zipping layers 1/6, 2 s", "onnxzip: zipping layers 2/6, 3 s",
        "onnxzip: zipping layers 3/6, 4 s", "onnxzip: zipping layers 4/6, 5 s, about 2 s to go",
        "onnxzip: zipping layers 5/6, 6 s, about 1 s to go"]


def test_a_zip_says_each_phase_as_it_starts(capsys):
    import numpy as np
    from conftest import SAMPLES

    from onnxzip import zip_models
    zip_models([SAMPLES / "mlp_digit.onnx", SAMPLES / "mlp_parity.onnx"], [dict(np.load(SAMPLES / "calib_digit.npz"))],
               share=0.5)
    lines = capsys.readouterr().err.splitlines()
    said = [line for line in lines if not line.startswith(("onnxzip: zipping layers", "onnxzip: loss statistics of"))]
    assert said[2].startswith("onnxzip: memory by design: about ")  # (before the work, onnxzip.sharing.memory)
    del said[2]
    assert said[:5] == ["onnxzip: loading, normalizing and aligning the models",
                        "onnxzip: running the originals on the data",
                        "onnxzip: loss statistics (gradients through ONNX Runtime)",
                        "onnxzip: writing the zipped graph",
                        "onnxzip: checking the zipped model against the originals"]
    # the loops say where they start: the loss statistics' batches per task, then the layers
    assert [line for line in lines if line.endswith(" 0/7") or line.endswith(" 0/3")] == [
        "onnxzip: loss statistics of task mlp_digit 0/7", "onnxzip: loss statistics of task mlp_parity 0/7",
        "onnxzip: zipping layers 0/3"]
