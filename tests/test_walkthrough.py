"""Bad inputs a newcomer walkthrough met (issue 22): one line and exit 2, or a warning, never a
traceback or a silent wrong result. Each of these failed before its fix."""
import json
import logging
import os

import numpy as np
import onnx
import pytest
from conftest import SAMPLES

from onnxzip.cli import main

CNN = [str(SAMPLES / "cnn_digit.onnx"), str(SAMPLES / "cnn_parity.onnx")]
CALIB = [str(SAMPLES / "calib_digit.npz"), str(SAMPLES / "calib_parity.npz")]


def one_line(capsys, argv, pattern):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxzip: error: ") and pattern in lines[0], err
    return lines[0]


def zip_args(tmp_path, models=CNN, data=CALIB, out=None):
    return ["zip", *models, "--data", *data, "-o", str(out or tmp_path / "z.onnx"), "-q"]


@pytest.fixture(scope="module")
def zipped(tmp_path_factory):
    path = tmp_path_factory.mktemp("z") / "z.onnx"
    assert main(zip_args(None, out=path)) == 0
    return str(path)


def test_a_cut_npz_is_one_line(tmp_path, capsys):
    cut = tmp_path / "cut.npz"
    data = open(CALIB[0], "rb").read()
    cut.write_bytes(data[:len(data) // 2])
    one_line(capsys, zip_args(tmp_path, data=[str(cut), CALIB[1]]), f"{cut}: not a readable .npz/.npy file")


@pytest.mark.parametrize("flags,message", [
    (["--share", "1.5"], "--share 1.5: give fractions in [0, 1]"),
    (["--share", "nan"], "--share nan: give fractions in [0, 1]"),
    (["--finetune", "-3"], "--finetune -3: give a number of steps >= 1 (0, the default: none)"),
    (["--std", "inf"], "--std inf: give finite values"),
    (["--mean", "nan"], "--mean nan: give finite values"),
    (["--mean", "1e39"], "--mean 1e+39: give finite values"),  # (past float32: no numpy overflow warning)
    (["--image-size", "100000,100000"], "--image-size 100000,100000: at most 16384 a side"),
])
def test_option_values_are_refused_before_any_loading(tmp_path, capsys, flags, message):
    args = zip_args(tmp_path)
    args.remove("-q")  # (a phase message, such as "loading", would be a second line: work before the refusal)
    one_line(capsys, args + flags, message)


def test_image_options_with_arrays_are_said_unused(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="onnxzip"):
        assert main(zip_args(tmp_path) + ["--mean", "0.5", "--bgr", "--share", "0"]) == 0
    assert any("--mean, --bgr: for image folders as --data only" in r.getMessage() for r in caplog.records)


def test_max_samples_with_arrays_is_said_unused(tmp_path, caplog):
    """Walkthrough 4: --max-samples 3 on an .npz still fitted every sample, without a word."""
    with caplog.at_level(logging.WARNING, logger="onnxzip"):
        assert main(zip_args(tmp_path) + ["--max-samples", "3", "--share", "0"]) == 0
    assert any("--max-samples: for image folders as --data only" in r.getMessage() for r in caplog.records)


def test_calibration_samples_all_the_same_are_said(tmp_path, caplog):
    same = tmp_path / "same.npz"
    np.savez(same, image=np.zeros((64, 1, 8, 8), np.float32))
    with caplog.at_level(logging.WARNING, logger="onnxzip"):
        assert main(zip_args(tmp_path, data=[str(same), CALIB[1]]) + ["--share", "0"]) == 0
    said = [r.getMessage() for r in caplog.records if "calibration samples are the same" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{same} (task 'cnn_digit'): all 64")


def test_token_ids_the_model_cannot_take_are_one_line_naming_it(tmp_path, capsys):
    data = dict(np.load(SAMPLES / "calib_bert.npz"))
    data["input_ids"] = data["input_ids"] + 100_000
    oov = tmp_path / "oov.npz"
    np.savez(oov, **data)
    bert = [str(SAMPLES / "bert_a.onnx"), str(SAMPLES / "bert_b.onnx")]
    line = one_line(capsys, zip_args(tmp_path, models=bert, data=[str(oov)]), f"onnxruntime cannot run {bert[0]}")
    assert "input_ids" in line and "Gather" in line


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_an_output_folder_that_cannot_be_written_is_refused_before_the_work(tmp_path, capsys):
    one_line(capsys, zip_args(tmp_path, out="/proc/z.onnx"), "-o /proc/z.onnx: cannot write into /proc")
    out = tmp_path / "z.onnx"
    one_line(capsys, zip_args(tmp_path, out=out) + ["--report", "/proc/r.json"], "--report /proc/r.json: cannot write")
    assert not out.exists()


def test_an_empty_output_path_is_named(tmp_path, capsys):
    one_line(capsys, ["zip", *CNN, "--data", *CALIB, "-o", ""], "-o: give a file name (an empty path was given)")


def test_a_finetune_that_only_harms_keeps_the_model_given_and_says_so(tmp_path, zipped, caplog):
    """Walkthrough 4: --lr 1e6 wrote a model whose test accuracy fell from 0.98 to 0.11, exit 0 with a
    warning. The weights kept are now the best on held-out samples, the given ones included."""
    train = [str(SAMPLES / "train_digit.npz"), str(SAMPLES / "train_parity.npz")]
    out = tmp_path / "f.onnx"
    with caplog.at_level(logging.WARNING, logger="onnxzip"):
        assert main(["finetune", zipped, "--data", *train, "--labels", "label", "-o", str(out),
                     "--lr", "1e6", "--steps", "20", "-q"]) == 0
    said = [r.getMessage() for r in caplog.records if "held-out samples" in r.getMessage()]
    assert len(said) == 1 and "never lowered the loss on the 480 held-out samples" in said[0] \
        and "kept as it was given" in said[0]  # (a fifth of each task's 1,200)
    given, written = onnx.load(zipped), onnx.load(str(out))
    for a, b in zip(given.graph.initializer, written.graph.initializer):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))


def test_finetune_and_distill_name_a_model_that_is_not_zipped(tmp_path, capsys):
    train = [str(SAMPLES / "train_digit.npz")]
    one_line(capsys, ["finetune", CNN[0], "--data", *train, "--labels", "label", "-o", str(tmp_path / "f.onnx")],
             f"{CNN[0]}: no outputs <task>/<name>, so not a zipped model")
    one_line(capsys, ["distill", CNN[0], "--originals", *CNN, "--data", *CALIB, "-o", str(tmp_path / "d.onnx")],
             f"{CNN[0]}: no outputs <task>/<name>")


def test_bench_takes_a_labelled_test_file_and_names_a_file_it_cannot_use(tmp_path, zipped, capsys):
    test = [str(SAMPLES / "test_digit.npz"), str(SAMPLES / "test_parity.npz")]
    assert main(["bench", zipped, "--originals", *CNN, "--data", *test, "--runs", "2", "-q"]) == 0
    capsys.readouterr()
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, img=np.zeros((4, 1, 8, 8), np.float32))
    one_line(capsys, ["bench", zipped, "--originals", *CNN, "--data", str(wrong), "--runs", "2"],
             f"{wrong} (for {CNN[0]}): missing input 'image'")


def test_a_report_without_tasks_is_refused(tmp_path, capsys):
    empty = tmp_path / "r.json"
    empty.write_text(json.dumps({"tasks": []}))
    one_line(capsys, ["report", str(empty), "-o", str(tmp_path / "r.html")], "not an onnxzip report")


def test_a_missing_external_data_file_is_one_line(tmp_path, capsys):
    model = onnx.load(CNN[0])
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    (tmp_path / "ext.data").unlink()
    one_line(capsys, zip_args(tmp_path, models=[str(path), CNN[1]]), f"{path}: not a readable ONNX model")


def test_graphsurgeon_warnings_stay_off_stdout(tmp_path, capfd):
    flat = [str(SAMPLES / "calib_flat_digit.npz"), str(SAMPLES / "calib_flat_parity.npz")]
    sk = [str(SAMPLES / "sklearn_digit.onnx"), str(SAMPLES / "sklearn_parity.onnx")]
    assert main(zip_args(tmp_path, models=sk, data=flat)) == 0
    out = capfd.readouterr().out
    assert "[W]" not in out and out == ""


def test_a_finetune_that_diverges_is_one_line_and_writes_nothing(tmp_path, zipped, capsys):
    train = [str(SAMPLES / "train_digit.npz"), str(SAMPLES / "train_parity.npz")]
    out = tmp_path / "f.onnx"
    one_line(capsys, ["finetune", zipped, "--data", *train, "--labels", "label", "-o", str(out), "--lr", "1e38",
                      "--steps", "5", "-q"], "fine-tuning diverged at step")
    assert not out.exists()


def test_sigterm_cleans_up_like_ctrl_c_and_exits_143(tmp_path):
    """A zip killed with SIGTERM (timeout, CI) mid-work leaves no temporary spool and says so in one line."""
    import signal
    import subprocess
    import sys
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "onnxzip", "zip", *CNN, "--data", *CALIB, "-o",
                             str(tmp_path / "z.onnx"), "--target-params", "0.6"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # (signalled once the layer loop has started: a spool exists then)
        seen.append(line)
        if "zipping layers" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 143, "".join(seen) + rest
    assert rest.strip().splitlines()[-1] == "onnxzip: terminated" and "Traceback" not in rest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("onnxzip-")] and not (tmp_path / "z.onnx").exists()


def test_progress_over_a_billion_steps_holds_no_list_of_them(monkeypatch, capsys):
    from onnxzip import progress
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False)
    steps = progress.progress(range(1, 10**9 + 1), "distilling", quiet=False)
    assert next(iter(steps)) == 1 and "distilling 0/1000000000" in capsys.readouterr().err


def test_a_target_params_out_of_reach_is_said(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="onnxzip"):
        assert main(zip_args(tmp_path) + ["--target-params", "0.01"]) == 0
    said = [r.getMessage() for r in caplog.records if "not reached" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("--target-params 0.01 not reached: this zip keeps 5")


def test_a_share_list_of_the_wrong_length_is_refused_before_any_statistics(tmp_path, capsys, monkeypatch):
    """It used to be found after the loss statistics (minutes on a large pair)."""
    import onnxzip.sharing.loop as loop

    def no_statistics(*args, **kwargs):
        raise AssertionError("loss statistics ran before the --share list was checked")

    monkeypatch.setattr(loop, "loss_statistics", no_statistics)
    code = main(["zip", str(SAMPLES / "bert_a.onnx"), str(SAMPLES / "bert_b.onnx"), "--data",
                 str(SAMPLES / "calib_bert.npz"), "--share", "0.5,0.5", "-o", str(tmp_path / "z.onnx"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "--share lists 2 fractions but the model has 6 layer groups" in err
    assert not (tmp_path / "z.onnx").exists()


def test_an_output_that_is_a_device_or_a_pipe_is_refused(tmp_path, capsys):
    """The atomic rename used to replace /dev/null (or a FIFO) by a regular file, exit 0."""
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    one_line(capsys, zip_args(tmp_path, out=fifo), "is not a regular file")
    assert fifo.is_fifo()
    one_line(capsys, zip_args(tmp_path, out="/dev/null"), "is not a regular file")


def test_token_major_layers_count_their_token_rows(tmp_path, caplog):
    """The few-rows warning counted one row per sample for token-major layers (51 samples of 17
    tokens read as 51 rows for a 65-wide statistic) and advised more samples for nothing."""
    with caplog.at_level(logging.WARNING):
        assert main(["zip", str(SAMPLES / "hfvit_a.onnx"), str(SAMPLES / "hfvit_b.onnx"), "--data",
                     str(SAMPLES / "calib_hfvit.npz"), "--share", "0.5", "-o", str(tmp_path / "z.onnx"), "-q"]) == 0
    assert "fewer rows than their size" not in caplog.text


def test_parameters_before_are_the_files_and_zero_biases_are_left_out(tmp_path):
    """'before' counted the normalized graphs, whose added zero biases made a share-0 zip of the BERT
    pair look 1.3% smaller than the files while it held 1.7% more; one --data for both tasks is
    recorded for both."""
    from onnx import numpy_helper

    from onnxzip.api import zip_models
    models = [SAMPLES / "bert_a.onnx", SAMPLES / "bert_b.onnx"]
    result = zip_models(models, [SAMPLES / "calib_bert.npz"], share=0.0, quiet=True)

    def floats(m):
        tensors = list(m.graph.initializer) + [a.t for n in m.graph.node if n.op_type == "Constant"
                                               for a in n.attribute if a.name == "value"]
        return sum(numpy_helper.to_array(t).size for t in tensors if numpy_helper.to_array(t).dtype.kind == "f")

    assert result.report["params_before"] == sum(floats(onnx.load(m)) for m in models)
    assert result.report["params_after"] <= result.report["params_before"]
    gemms = [n for n in result.model.graph.node if n.op_type == "Gemm"]
    assert any(len(n.input) == 2 for n in gemms)  # (the files' MatMuls without a bias)
    assert [r.data for r in result.summary.inputs] == [str(SAMPLES / "calib_bert.npz")] * 2


def test_a_finetune_batch_larger_than_the_data_runs_at_the_data_size(tmp_path, zipped, monkeypatch):
    """--batch-size 100000 on 1,200 samples built a 100,000-sample training graph (killed for memory)."""
    import onnxzip.tune.train as train
    made = []
    real = train.Trainer

    class Spy(real):
        def __init__(self, model, batch, *args, **kwargs):
            made.append(batch)
            super().__init__(model, batch, *args, **kwargs)

    monkeypatch.setattr(train, "Trainer", Spy)
    train_data = [str(SAMPLES / "train_digit.npz"), str(SAMPLES / "train_parity.npz")]
    code = main(["finetune", zipped, "--data", *train_data, "--labels", "label", "--steps", "2", "--batch-size", "100000",
                 "-o", str(tmp_path / "f.onnx"), "-q"])
    n = max(len(np.load(f)["label"]) for f in train_data)
    assert code == 0 and made and max(made) <= n


def test_not_shared_reasons_name_whole_heads_and_a_target_of_one(tmp_path, caplog):
    hf = [str(SAMPLES / "hfvit_a.onnx"), str(SAMPLES / "hfvit_b.onnx")]
    from onnxzip.api import zip_models
    small = zip_models(hf, [SAMPLES / "calib_hfvit.npz"], share=0.1, quiet=True)
    reasons = {r.reason for r in small.summary.not_shared}
    assert "share 0.1 of 4 attention heads (8 neurons each, shared whole) rounds to none" in reasons
    with caplog.at_level(logging.WARNING):
        none = zip_models(CNN, CALIB, target_params=1.0, quiet=True)
    assert {r.reason for r in none.summary.not_shared} == {"--target-params 1 keeps every parameter"}
    assert "nothing is shared" not in caplog.text  # (asked for: not a surprise)


def test_quiet_and_verbose_together_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:  # (argparse's own exit)
        main(zip_args(tmp_path) + ["-v"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "not allowed with argument -q/--quiet" in err[0]


def test_bench_sizes_on_token_ids_says_what_they_are(tmp_path, capsys):
    """It said "input 'input_ids' has 0 open size(s)" of an input whose sequence length is open."""
    models = [str(SAMPLES / "bert_a.onnx"), str(SAMPLES / "bert_b.onnx")]
    out = tmp_path / "z.onnx"
    assert main(["zip", *models, "--data", str(SAMPLES / "calib_bert.npz"), "--share", "0", "-o", str(out), "-q"]) == 0
    one_line(capsys, ["bench", str(out), "--originals", *models, "--sizes", "16,16", "-q"],
             "integer input 'input_ids' has 1 open size(s) past the batch")


def test_an_alignment_failure_says_how_the_nodes_differ(tmp_path, capsys):
    """ViT legacy x dynamo: it named two Shape nodes and said they 'differ'; the dynamo Shape reads only
    the batch (start/end attributes): that is what the message now says."""
    one_line(capsys, ["zip", str(SAMPLES / "vit_digit_legacy.onnx"), str(SAMPLES / "vit_parity.onnx"), "--data",
                      *CALIB, "-o", str(tmp_path / "z.onnx"), "-q"],
             "differs in its attributes [] against [('end', '1'), ('start', '0')]")


def _with_nan_weight(tmp_path, value=float("nan")):
    m = onnx.load(CNN[1])
    t = next(t for t in m.graph.initializer if onnx.numpy_helper.to_array(t).ndim == 4)
    a = onnx.numpy_helper.to_array(t).copy()
    a.flat[3] = value
    t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))
    path = tmp_path / "nan.onnx"
    onnx.save(m, path)
    return str(path), t.name


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_weight_that_is_not_finite_is_named_at_load(tmp_path, capsys, value):
    """Walkthrough 5: a NaN or Inf weight ended the zip in a traceback (numpy's 'Probabilities contain
    NaN'), and eval printed an accuracy computed from NaN scores (argmax: class 0), exit 0."""
    path, name = _with_nan_weight(tmp_path, value)
    one_line(capsys, zip_args(tmp_path, models=[CNN[0], path]), f"nan.onnx: weight {name!r} holds 1 NaN or Inf value(s)")
    one_line(capsys, ["eval", path, "--data", str(SAMPLES / "test_parity.npz"), "--output", "logits", "--labels", "label"],
             "output 'logits' holds NaN or Inf")


def test_rows_per_statistic_are_the_fewest_of_any_task(tmp_path):
    """Walkthrough 5: with one task of 5 samples, the report said 256 rows for a layer that task's
    statistic read from 5 (the few-rows warning said 5)."""
    few = tmp_path / "few.npz"
    np.savez(few, image=np.load(CALIB[0])["image"][:5])
    report = tmp_path / "r.json"
    assert main(zip_args(tmp_path, data=[str(few), CALIB[1]]) + ["--report", str(report)]) == 0
    rows = {r["name"]: r["stat_rows"] for r in json.loads(report.read_text())["layers"]}
    assert min(rows.values()) > 0 and all(n % 5 == 0 and n <= 5 * 64 for n in rows.values())  # (5 x positions)


def test_bench_says_when_samples_are_repeated_to_fill_a_batch(zipped, caplog):
    with caplog.at_level(logging.WARNING, logger="onnxzip"):
        assert main(["bench", zipped, "--originals", *CNN, "--data", *CALIB, "--batch", "1000", "--runs", "1",
                     "-q"]) == 0
    assert "holds 256 samples for a batch of 1000: they are repeated to fill it" in caplog.text


def test_distill_without_held_out_samples_says_the_last_step_is_kept(tmp_path, zipped, caplog):
    """Walkthrough 5: distill --hold-out 0 wrote a model worse than the one given, without a word
    that its 'never worse' needs held-out samples."""
    with caplog.at_level(logging.WARNING, logger="onnxzip"):
        assert main(["distill", zipped, "--originals", *CNN, "--data", *CALIB, "-o", str(tmp_path / "d.onnx"),
                     "--steps", "2", "--hold-out", "0", "-q"]) == 0
    assert "distilling without held-out samples (--hold-out 0): the last step's weights are kept" in caplog.text


def test_a_model_written_under_another_suffix_is_said(tmp_path, caplog):
    """Walkthrough 6: -o out.txt wrote an ONNX model without a word (--report checks its suffix)."""
    with caplog.at_level(logging.WARNING, logger="onnxzip"):
        assert main(zip_args(tmp_path, out=tmp_path / "out.txt") + ["--share", "0"]) == 0
    assert "out.txt: an ONNX model is written there (the name does not end in .onnx)" in caplog.text
    assert onnx.load(str(tmp_path / "out.txt")).producer_name == "onnxzip"
