"""``onnxzip bench``: the figures against independent measurements (file sizes, the run's outputs)."""
import os
import re

import numpy as np
import onnx
import pytest
from conftest import SAMPLES

from onnxzip import zip_models
from onnxzip.bench import bench, bench_data, file_bytes, task_feeds, zipped_inputs
from onnxzip.cli import main
from onnxzip.errors import InputError, UsageError
from onnxzip.images import ImageRecipe

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
    assert rc == 0  # test_digit.npz holds labels besides the input: they are left out
    rc = main(["bench", zipped, "--originals", *ORIGINALS, "--data", str(SAMPLES / "calib_digit.npz"), "--runs", "3",
               "--batch", "4"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and re.fullmatch(r"latency ratio [0-9.]+; memory ratio [0-9.]+; bytes ratio [0-9.]+", out[-1])
    assert np.isclose(float(out[-1].split("bytes ratio ")[1]), os.path.getsize(zipped) /
                      sum(os.path.getsize(p) for p in ORIGINALS), atol=1e-3)


def test_originals_in_the_wrong_order_or_missing(zipped, tmp_path, capsys):
    with pytest.raises(UsageError, match="task order"):
        bench(zipped, ORIGINALS[::-1], runs=1)
    assert main(["bench", str(tmp_path / "none.onnx"), "--originals", *ORIGINALS]) == 2
    assert main(["bench", zipped, "--originals", *ORIGINALS, "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"onnxzip: error: {tmp_path / 'none.onnx'}: no such file",
                   f"onnxzip: error: {tmp_path}: no PNG or JPEG images in this folder"]  # (a folder is images)


def test_a_model_that_was_not_zipped_is_noted(zipped, tmp_path):
    """The same outputs but random weights: far from the zipped digit task on the calibration images."""
    import onnx
    from onnx import numpy_helper

    from onnxzip.bench import format_bench
    from onnxzip.graph.io import load_arrays
    m = onnx.load(ORIGINALS[0])
    rng = np.random.default_rng(0)
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype.kind == "f":
            t.CopyFrom(numpy_helper.from_array(rng.normal(size=a.shape).astype(a.dtype), t.name))
    onnx.save(m, tmp_path / "random.onnx")
    data = [load_arrays(SAMPLES / "calib_digit.npz")]
    with pytest.raises(UsageError, match="not the model task 'digit' was zipped from"):  # (the zip's stamp)
        bench(zipped, [str(tmp_path / "random.onnx"), ORIGINALS[1]], data, runs=2, warmup=0)
    unstamped = onnx.load(zipped)  # a zip made before the stamp: the outputs tell
    del unstamped.metadata_props[:]
    onnx.save(unstamped, tmp_path / "old.onnx")
    r = bench(str(tmp_path / "old.onnx"), [str(tmp_path / "random.onnx"), ORIGINALS[1]], data, runs=2, warmup=0)
    assert r["rel_err"]["digit"] > 0.5 and "check that --originals" in format_bench(r)
    assert max(bench(zipped, ORIGINALS, data, runs=2, warmup=0)["rel_err"].values()) < 0.5


def test_shared_input_compares_like_with_like(zipped, capsys):
    """One shared input, one data file per original: the originals read the array the zipped model
    reads, so a share-1 zip is not reported as far from them; --runs 0 is refused."""
    from onnxzip.graph.io import load_arrays
    data = [load_arrays(SAMPLES / "calib_digit.npz"), load_arrays(SAMPLES / "calib_parity.npz")]
    assert max(bench(zipped, ORIGINALS, data, runs=2, warmup=0)["rel_err"].values()) < 0.5
    assert main(["bench", zipped, "--originals", *ORIGINALS, "--runs", "0"]) == 2
    assert "--runs 0" in capsys.readouterr().err


def test_an_image_folder_is_read_as_zip_reads_it(zipped, tmp_path):
    """--data as a folder of PNGs with zip's preprocessing flags: the feeds are what
    onnxzip.images.load_folder makes of the folder (the oracle: PIL reads, then the recipe by hand)."""
    from PIL import Image
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(3)]
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(folder / f"{i}.png")
    data = bench_data([str(folder)], ORIGINALS, ImageRecipe(mean=(0.5,), std=(0.25,)))
    want = np.stack([(p.astype(np.float32) / 255 - 0.5) / 0.25 for p in pixels])[:, None]
    for d in data:
        np.testing.assert_allclose(np.sort(d["image"].reshape(3, -1), axis=0), np.sort(want.reshape(3, -1), axis=0),
                                   rtol=1e-6, atol=1e-6)
    feeds = task_feeds(ORIGINALS[0], data[0], 5, seed=0)
    assert feeds["image"].shape == (5, 1, 8, 8)


def test_sizes_need_open_sizes(zipped):
    with pytest.raises(UsageError, match="has 0 open size"):
        bench(zipped, ORIGINALS, batch=2, runs=1, warmup=0, size=(12, 10))


def test_bench_at_another_size_of_a_model_with_open_sizes(tmp_path, capsys):
    import graphs
    paths = []
    for seed in (1, 2):
        m = graphs.resnet(seed)
        dims = m.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "H", "W"
        paths.append(str(tmp_path / f"r{seed}.onnx"))
        onnx.save(m, paths[-1])
    r = zip_models(paths, [{"x": graphs.data(3, (3, 8, 8))}], share=0.5, quiet=True, names=("a", "b"))
    r.save(tmp_path / "z.onnx")
    assert main(["bench", str(tmp_path / "z.onnx"), "--originals", *paths, "--sizes", "12,10", "16,16",
                 "--batch", "2", "--runs", "2"]) == 0
    out = capsys.readouterr().out
    assert "batch 2 at 12x10," in out and "batch 2 at 16x16," in out and out.count("latency ratio") == 2


def test_bench_says_what_it_does_and_q_silences_it(zipped, capsys):
    args = ["bench", zipped, "--originals", *ORIGINALS, "--runs", "2", "--batch", "2"]
    assert main(args) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("onnxzip bench: 5 warm-up rounds of each side")
    assert any(line.startswith("onnxzip bench: timing 2 rounds of each side, ") for line in err)
    assert sum("in a fresh process" in line for line in err) == 2
    assert main(args + ["-q"]) == 0 and capsys.readouterr().err == ""


def test_image_options_with_arrays_are_said_to_be_unused(zipped, caplog):
    assert main(["bench", zipped, "--originals", *ORIGINALS, "--data", str(SAMPLES / "calib_digit.npz"), "--mean",
                 "0.5", "--runs", "1", "--batch", "2", "-q"]) == 0
    assert any(r.getMessage().startswith("--mean: for image folders as --data only") for r in caplog.records)


@pytest.mark.parametrize("value", ["{not json", "[1, 2]", None])
def test_an_unreadable_or_missing_stamp_is_said_not_a_traceback(zipped, tmp_path, caplog, value):
    """Walkthrough 4: a stamp edited to text that is not JSON gave a JSONDecodeError traceback (bench,
    distill); a missing or list-valued one skipped the weights check without a word."""
    import onnx

    from onnxzip.stamp import KEY
    m = onnx.load(zipped)
    del m.metadata_props[:]
    if value is not None:
        m.metadata_props.add(key=KEY, value=value)
    onnx.save(m, tmp_path / "edited.onnx")
    with caplog.at_level("WARNING", logger="onnxzip"):
        r = bench(str(tmp_path / "edited.onnx"), ORIGINALS, None, runs=1, warmup=0)
    assert r["ratios"]["bytes"] > 0
    said = "missing" if value is None else "unreadable"
    assert f"record of its originals' weights (metadata 'onnxzip.originals') is {said}" in caplog.text


def test_a_size_no_model_takes_names_the_originals_not_an_inner_node(tmp_path):
    """Walkthrough 4: bench --sizes at a size the originals cannot take either (here an odd size, where
    a pooled and upsampled copy of the input no longer adds to it) named an inner node of the zipped
    graph; it now says the originals fail there too, with their own message."""
    import graphs
    from onnx import helper, numpy_helper

    from onnxzip.errors import InputError
    paths = []
    for seed in (1, 2):
        m = graphs.resnet(seed)
        dims = m.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "H", "W"
        for node in m.graph.node:
            node.input[:] = ["x2" if i == "x" else i for i in node.input]
        m.graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "up"))
        m.graph.node.insert(0, helper.make_node("Add", ["x", "x.up"], ["x2"]))
        m.graph.node.insert(0, helper.make_node("Resize", ["x.pool", "", "up"], ["x.up"], mode="nearest"))
        m.graph.node.insert(0, helper.make_node("MaxPool", ["x"], ["x.pool"], kernel_shape=[2, 2], strides=[2, 2]))
        paths.append(str(tmp_path / f"r{seed}.onnx"))
        onnx.save(m, paths[-1])
    r = zip_models(paths, [{"x": graphs.data(3, (3, 8, 8))}], share=0.5, quiet=True, names=("a", "b"))
    r.save(tmp_path / "z.onnx")
    assert bench(str(tmp_path / "z.onnx"), paths, batch=2, runs=1, warmup=0, size=(10, 10))["ratios"]["bytes"] > 0
    with pytest.raises(InputError, match=r"^the originals cannot run on these inputs either: onnxruntime cannot run "
                                         r".*r1\.onnx on these inputs \(x \(2, 3, 9, 9\)\)"):
        bench(str(tmp_path / "z.onnx"), paths, batch=2, runs=1, warmup=0, size=(9, 9))
