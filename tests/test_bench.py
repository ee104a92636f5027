"""``onnxzip bench``: the figures against independent measurements (file sizes, the run's outputs)."""
import os
import re

import numpy as np
import pytest

from conftest import SAMPLES
from onnxzip import zip_models
from onnxzip.bench import bench, file_bytes, task_feeds, zipped_inputs
from onnxzip.cli import main
from onnxzip.errors import InputError, UsageError

ORIGINALS = [str(SAMPLES / "cnn_digit.onnx"), str(SAMPLES / "cnn_parity.onnx")]


@pytest.fixture(scope="module")
def zipped(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "z.onnx"
    r = zip_models(ORIGINALS, [str(SAMPLES / "calib_digit.npz")], share=1.0, quiet=True, names=("digit", "parity"))
    r.save(out)
    return str(out)


def test_bench_figures(zipped):
    r = bench(zipped, ORIGINALS, batch=8, runs=5, warmup=1)
    assert r["tasks"] == ["digit", "parity"]
    assert r["zipped"].bytes == os.path.getsize(zipped)
    assert r["originals"].bytes == sum(os.path.getsize(p) for p in ORIGINALS)
    assert r["ratios"]["bytes"] == pytest.approx(r["zipped"].bytes / r["originals"].bytes)
    for side in (r["zipped"], r["originals"]):
        assert 0 < side.median_ms <= side.p90_ms and side.memory_mb >= 0


def test_zipped_inputs_map_tasks(zipped, tmp_path):
    feeds = [task_feeds(p, None, 4, seed=i) for i, p in enumerate(ORIGINALS)]
    assert zipped_inputs(zipped, ["digit", "parity"], feeds)["image"] is feeds[0]["image"]
    sep = zip_models(ORIGINALS, [str(SAMPLES / "calib_digit.npz")], share=0.5, quiet=True, names=("digit", "parity"),
                     separate_inputs=True)
    path = tmp_path / "sep.onnx"
    sep.save(path)
    got = zipped_inputs(str(path), ["digit", "parity"], feeds)
    assert got["parity/image"] is feeds[1]["image"] and got["digit/image"] is feeds[0]["image"]


def test_bench_refuses_what_it_cannot_measure(zipped):
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UsageError, match="needs CUDAExecutionProvider, which this onnxruntime build lacks"):
            bench(zipped, ORIGINALS, provider="cuda", runs=1)
    with pytest.raises(UsageError, match="give 2 --originals"):
        bench(zipped, ORIGINALS[:1], runs=1)
    with pytest.raises(InputError, match="not a zipped model"):
        bench(ORIGINALS[0], ORIGINALS, runs=1)


def test_external_data_counts(tmp_path):
    import onnx
    m = onnx.load(ORIGINALS[0])
    path = tmp_path / "ext.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
                    size_threshold=0)
    assert file_bytes(str(path)) == os.path.getsize(path) + os.path.getsize(tmp_path / "ext.data")


def test_cli_last_line(zipped, capsys):
    rc = main(["bench", zipped, "--originals", *ORIGINALS, "--data", str(SAMPLES / "test_digit.npz"), "--runs", "3",
               "--batch", "4"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 2  # test_digit.npz holds labels besides the input: refused, one line
    rc = main(["bench", zipped, "--originals", *ORIGINALS, "--data", str(SAMPLES / "calib_digit.npz"), "--runs", "3",
               "--batch", "4"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and re.fullmatch(r"latency ratio [0-9.]+; memory ratio [0-9.]+; bytes ratio [0-9.]+", out[-1])
    assert np.isclose(float(out[-1].split("bytes ratio ")[1]), os.path.getsize(zipped) /
                      sum(os.path.getsize(p) for p in ORIGINALS), atol=1e-3)
