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
