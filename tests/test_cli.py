import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import SAMPLES

from onnxzip.cli import main

MLP = [str(SAMPLES / "mlp_digit.onnx"), str(SAMPLES / "mlp_parity.onnx")]
CALIB = [str(SAMPLES / "calib_digit.npz"), str(SAMPLES / "calib_parity.npz")]


def digest(paths):
    return [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]


def fails(capsys, argv, pattern):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxzip: error: "), err
    assert pattern in lines[0], lines[0]
    return lines[0]


def test_zip_writes_model_and_report(tmp_path, capsys):
    before = digest(MLP + CALIB)
    out, rep = tmp_path / "z.onnx", tmp_path / "r.json"
    assert main(["zip", *MLP, "--data", *CALIB, "-o", str(out), "--share", "0.5", "--names", "digit,parity",
                 "--report", str(rep), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    report = json.loads(rep.read_text())
    for key in ("params_before", "params_after", "bytes_before", "bytes_after", "layers", "tasks"):
        assert key in report
    assert [layer["shared"] for layer in report["layers"]] == [150, 50]
    assert {t["name"] for t in report["tasks"]} == {"digit", "parity"}
    assert all(set(t) >= {"name", "rel_err", "top1_agreement"} for t in report["tasks"])
    assert report["params_after"] < report["params_before"]
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["digit/logits", "parity/logits"]
    assert digest(MLP + CALIB) == before  # inputs untouched


def test_zip_prints_a_table_and_where_the_report_went(tmp_path, capsys):
    rep = tmp_path / "r.json"
    assert main(["zip", *MLP, "--data", *CALIB, "-o", str(tmp_path / "z.onnx"), "--share", "0.25,0.5",
                 "--matching", "greedy", "--report", str(rep)]) == 0
    out = capsys.readouterr().out
    assert "/1/Gemm" in out and "parameters" in out and "equivalence check" in out
    assert out.strip().splitlines()[-1] == f"wrote the report to {rep} (JSON)" and rep.exists()


@pytest.mark.parametrize("name", ["r.txt", "report"])
def test_a_report_path_that_is_neither_html_nor_json_is_refused_before_the_work(tmp_path, capsys, name):
    out = tmp_path / "z.onnx"
    fails(capsys, ["zip", *MLP, "--data", *CALIB, "-o", str(out), "--report", str(tmp_path / name)],
          "give a path ending in .html (one page with plots) or .json")
    assert not out.exists() and not (tmp_path / name).exists()


def walk_layers(path):
    """An independent walk of the ONNX graph: every Conv/Gemm node with an initializer weight, in node
    order, as (name, kind, weight shape, neurons); the last one is the head."""
    m = onnx.load(str(path))
    inits = {i.name: tuple(i.dims) for i in m.graph.initializer}
    rows = []
    for node in m.graph.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in inits:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Gemm":  # the weight as stored is (neurons, inputs)
                assert {**dict(transA=0, alpha=1.0, beta=1.0), **attrs} == dict(transA=0, transB=1, alpha=1.0, beta=1.0)
            shape = inits[node.input[1]]
            rows.append((node.name, "conv" if node.op_type == "Conv" else "dense", shape, shape[0]))
    return rows


def table(out, path):
    """The layer rows ``inspect`` printed for one model: (name, kind, shape, neurons, role)."""
    lines = out.splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"{path}: "))) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        name, kind, rest = line.split(None, 2)
        shape, rest = rest.split(")", 1)
        neurons, role = rest.split(None, 1)
        rows.append((name, kind, tuple(int(v) for v in shape.strip("( ").split(",")), int(neurons), role))
    return rows


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_inspect(capsys, arch):
    paths = [str(SAMPLES / f"{arch}_{t}.onnx") for t in ("digit", "parity")]
    assert main(["inspect", *paths]) == 0
    out = capsys.readouterr().out
    for path in paths:
        want = walk_layers(path)
        roles = ["hidden (zippable)"] * (len(want) - 1) + ["head (private)"]
        assert table(out, path) == [w + (r,) for w, r in zip(want, roles)]
    hidden = len(walk_layers(paths[0])) - 1
    assert f"aligned: same architecture, {hidden} zippable hidden layers" in out.splitlines()
    assert (hidden, arch) in ((2, "mlp"), (4, "cnn"))
    assert main(["inspect", MLP[0], str(SAMPLES / "cnn_digit.onnx")]) == 1
    assert "NOT aligned" in capsys.readouterr().out


def test_eval(capsys):
    assert main(["eval", MLP[0], "--data", str(SAMPLES / "test_digit.npz"), "--output", "logits"]) == 0
    assert "top-1 accuracy 0.9" in capsys.readouterr().out


def test_demo_runs(tmp_path):
    """One row of the demo (CI runs the whole ``onnxzip demo``): the MLP pair at share 0 keeps every
    parameter and each task's test accuracy equals its original's, both computed here as the numpy
    argmax of ONNX Runtime's logits on the held-out test images."""
    import onnxruntime as ort

    from onnxzip import InputError, ZipOptions
    from onnxzip.demo import run_demo, samples_dir
    (row,) = run_demo(samples_dir(None), shares=(0.0,), archs=("mlp",), options=ZipOptions(quiet=True))
    assert (row["arch"], row["share"], row["params_kept"]) == ("mlp", 0.0, 1.0)
    for t in ("digit", "parity"):
        test = np.load(SAMPLES / f"test_{t}.npz")
        sess = ort.InferenceSession(str(SAMPLES / f"mlp_{t}.onnx"), providers=["CPUExecutionProvider"])
        acc = float(np.mean(sess.run(["logits"], {"image": test["image"]})[0].argmax(axis=1) == test["label"]))
        assert row["original"][t] == acc and row["accuracy"][t] == acc
    assert row["original"]["digit"] > 0.9 and row["original"]["parity"] > 0.9
    with pytest.raises(InputError, match="no onnxzip samples here"):
        samples_dir(str(tmp_path))


# ---------------------------------------------------------------------------- bad input: exit 2, one line

def zip_args(tmp_path, models=MLP, data=CALIB, out=None):
    return ["zip", *models, "--data", *data, "-o", str(out or tmp_path / "z.onnx"), "-q"]


def test_missing_file(tmp_path, capsys):
    fails(capsys, zip_args(tmp_path, models=[MLP[0], str(tmp_path / "nope.onnx")]), "nope.onnx: no such file")


def test_not_onnx(tmp_path, capsys):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n")
    fails(capsys, zip_args(tmp_path, models=[MLP[0], str(bad)]), "notes.onnx: not")


def test_corrupt_protobuf(tmp_path, capsys):
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(open(MLP[1], "rb").read()[:5000])
    fails(capsys, zip_args(tmp_path, models=[MLP[0], str(bad)]), "cut.onnx")


def test_architectures_differ(tmp_path, capsys):
    line = fails(capsys, zip_args(tmp_path, models=[MLP[0], str(SAMPLES / "cnn_digit.onnx")]),
                 "architectures differ at node 0")
    assert "mlp_digit.onnx node '/0/Flatten'" in line and "cnn_digit.onnx node 'node_Conv_19'" in line


def test_unsupported_op_is_named(tmp_path, capsys):
    m = onnx.load(MLP[1])
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    relu.domain = "com.example"
    bad = tmp_path / "custom.onnx"
    onnx.save(m, str(bad))
    fails(capsys, zip_args(tmp_path, models=[str(bad), str(bad)]), f"node '{relu.name}' (com.example:Relu)")


def test_control_flow_is_refused_naming_the_node(tmp_path, capsys):
    from onnx import TensorProto, helper
    m = onnx.load(MLP[1])
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    branch = helper.make_graph([helper.make_node("Relu", [relu.input[0]], ["r"])], "b", [],
                               [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)])
    cond = helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True]))
    iff = helper.make_node("If", ["cond"], [relu.output[0]], name="branchy", then_branch=branch, else_branch=branch)
    idx = list(m.graph.node).index(relu)
    m.graph.node.remove(relu)
    m.graph.node.insert(idx, iff)
    m.graph.node.insert(idx, cond)
    bad = tmp_path / "if.onnx"
    onnx.save(m, str(bad))
    fails(capsys, zip_args(tmp_path, models=[str(bad), str(bad)]), "node 'branchy' (If) holds a subgraph")


def write_npz(tmp_path, **arrays):
    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("arrays,message", [
    (dict(img=np.zeros((4, 1, 8, 8), np.float32)), "missing input 'image'"),
    (dict(image=np.zeros((4, 1, 8, 8), np.float32), extra=np.zeros(4)), "key 'extra' is not a model input"),
    (dict(image=np.zeros((4, 1, 9, 8), np.float32)), "input 'image' has shape (4, 1, 9, 8), the model expects (?, 1, 8, 8)"),
    (dict(image=np.zeros((4, 1, 8, 8), np.int32)), "input 'image' has dtype int32"),
    (dict(image=np.full((4, 1, 8, 8), np.nan, np.float32)), "input 'image' contains NaN or Inf"),
    (dict(image=np.zeros((0, 1, 8, 8), np.float32)), "no samples"),
])
def test_bad_calibration_data(tmp_path, capsys, arrays, message):
    fails(capsys, zip_args(tmp_path, data=[CALIB[0], write_npz(tmp_path, **arrays)]), message)


def test_output_equal_to_input(tmp_path, capsys):
    copy = tmp_path / "a.onnx"
    shutil.copy(MLP[0], copy)
    before = digest([copy])
    fails(capsys, zip_args(tmp_path, models=[str(copy), MLP[1]], out=copy), "that is an input file; choose another -o path")
    assert digest([copy]) == before


@pytest.mark.parametrize("flags,message", [
    (["--share", "1.5"], "--share 1.5: give fractions in [0, 1]"),
    (["--share", "abc"], "--share 'abc': give a fraction"),
    (["--share", "0.5,abc"], "--share '0.5,abc': give a fraction"),
    (["--share", "0.5,0.5,0.5"], "3 fractions but the model has 2 layer groups"),
    (["--names", "a"], "1 name for 2 models"),
    (["--names", "a,a"], "must differ"),
    (["--names", "a/b,c"], "not a valid task name"),
    (["--share", "0.5", "--target-params", "0.6"], "not both"),
    (["--target-params", "1.5"], "give a fraction in (0, 1]"),
])
def test_bad_options(tmp_path, capsys, flags, message):
    fails(capsys, zip_args(tmp_path) + flags, message)


def test_data_count_mismatch(tmp_path, capsys):
    fails(capsys, ["zip", *MLP, *MLP[:1], "--data", *CALIB, "-o", str(tmp_path / "z.onnx")],
          "one calibration file per model, or one for all")


def test_one_data_file_for_all(tmp_path, capsys):
    assert main(["zip", *MLP, "--data", CALIB[0], "-o", str(tmp_path / "z.onnx"), "-q"]) == 0


def test_nothing_written_on_error(tmp_path, capsys):
    main(zip_args(tmp_path, data=[CALIB[0], write_npz(tmp_path, img=np.zeros((2, 1, 8, 8), np.float32))]))
    assert not (tmp_path / "z.onnx").exists()


def test_finetune_improves_a_fully_shared_zip(tmp_path, capsys):
    from onnxzip import accuracy_of
    zipped, tuned = tmp_path / "z.onnx", tmp_path / "t.onnx"
    assert main(["zip", *MLP, "--data", *CALIB, "-o", str(zipped), "--share", "1", "--names", "digit,parity",
                 "--no-recover", "-q"]) == 0
    train = [str(SAMPLES / "train_digit.npz"), str(SAMPLES / "train_parity.npz")]
    assert main(["finetune", str(zipped), "--data", *train, "-o", str(tuned), "--steps", "150", "-q"]) == 0
    test = np.load(SAMPLES / "test_digit.npz")
    before = accuracy_of(str(zipped), {"image": test["image"]}, test["label"], "digit/logits")
    after = accuracy_of(str(tuned), {"image": test["image"]}, test["label"], "digit/logits")
    assert after > before + 0.02  # measured: 0.846 -> about 0.95
    a, b = onnx.load(str(zipped)), onnx.load(str(tuned))
    assert [i.name for i in a.graph.initializer] == [i.name for i in b.graph.initializer]  # same sharing
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]


def test_finetune_needs_labels(tmp_path, capsys):
    zipped = tmp_path / "z.onnx"
    assert main(["zip", *MLP, "--data", *CALIB, "-o", str(zipped), "-q"]) == 0
    fails(capsys, ["finetune", str(zipped), "--data", *CALIB, "-o", str(tmp_path / "t.onnx")], "no labels key 'label'")


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import onnxzip.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(onnxzip.cli, "zip_models", interrupted)
    out = tmp_path / "z.onnx"
    assert main(["zip", *MLP, "--data", *CALIB, "-o", str(out)]) == 130
    assert capsys.readouterr().err.strip() == "onnxzip: interrupted" and not out.exists()


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, capsys):
    fails(capsys, ["zip", *MLP, "--data", *CALIB, "-o", str(tmp_path)], "is a directory")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails(capsys, ["zip", *MLP, "--data", *CALIB, "-o", str(blocker / "z.onnx")], "cannot write into")
    fails(capsys, ["zip", *MLP, "--data", *CALIB, "-o", str(tmp_path / "z.onnx"), "--report", str(blocker / "r.json")],
          "cannot write into")


def test_labels_key_missing_from_data(tmp_path, capsys):
    fails(capsys, zip_args(tmp_path) + ["--labels", "nosuchkey"], "calib_digit.npz: no labels key 'nosuchkey'")
    assert not (tmp_path / "z.onnx").exists()


def test_labels_that_are_not_class_indices_are_one_line(tmp_path, capsys, test_data):
    """An input named as the labels, labels out of the task's class range, fractional labels: one line, exit 2
    (they were a traceback, a traceback and a silent zip)."""
    data = str(SAMPLES / "test_digit.npz")
    fails(capsys, zip_args(tmp_path, data=[data]) + ["--labels", "image"],
          "--labels 'image' names an input of the model, not its labels")
    parity = write_npz(tmp_path, image=test_data["image"], label=test_data["label"])  # digits given as parity labels
    fails(capsys, zip_args(tmp_path, data=[data, parity]) + ["--labels", "label"],
          f"{parity} (task 'mlp_parity'): labels must be class indices in [0, 2); these run from 0 to 9")
    halves = write_npz(tmp_path, image=test_data["image"], label=test_data["label"] + 0.5)
    fails(capsys, zip_args(tmp_path, data=[halves]) + ["--labels", "label"],
          "labels must be class indices, integers in [0, 10); these are float64")
    assert not (tmp_path / "z.onnx").exists()


@pytest.fixture
def test_data():
    return dict(np.load(SAMPLES / "test_digit.npz"))


@pytest.mark.parametrize("arrays,output,message", [
    (None, "nosuch", "has no output 'nosuch' (outputs: logits)"),
    (dict(img="image", label="label"), "logits", "key 'img' is not an input of the model (inputs: image)"),
    (dict(image="small", label="label"), "logits", "input 'image' has shape (597, 1, 4, 8), the model expects"),
    (dict(image="image", label="few"), "logits", "labels have shape (10,); give one class index per sample (597)"),
    (dict(image="image"), "logits", "no labels key 'label'"),
    (dict(image="image", label="shifted"), "logits", "labels must be class indices in [0, 10); these run from 20 to 29"),
    (dict(image="image", label="halves"), "logits", "labels must be class indices, integers of 0 or more; these are float64"),
])
def test_eval_bad_input(tmp_path, capsys, test_data, arrays, output, message):
    pool = {**test_data, "small": test_data["image"][:, :, :4], "few": test_data["label"][:10],
            "shifted": test_data["label"] + 20, "halves": test_data["label"] + 0.5}
    data = str(SAMPLES / "test_digit.npz") if arrays is None else write_npz(
        tmp_path, **{k: pool[v] for k, v in arrays.items()})
    fails(capsys, ["eval", MLP[0], "--data", data, "--output", output], message)


def test_eval_of_a_zipped_model_with_one_input_per_task(tmp_path, capsys, test_data):
    zipped = tmp_path / "z.onnx"
    assert main(zip_args(tmp_path, out=zipped) + ["--separate-inputs", "--names", "digit,parity"]) == 0
    assert main(["eval", str(zipped), "--data", str(SAMPLES / "test_digit.npz"), "--output", "digit/logits"]) == 0
    assert "top-1 accuracy 0.9" in capsys.readouterr().out
    data = write_npz(tmp_path, **{"parity/image": test_data["image"], "label": test_data["label"]})
    fails(capsys, ["eval", str(zipped), "--data", data, "--output", "digit/logits"],
          "key 'parity/image' is not an input of task 'digit' (inputs: digit/image)")


def test_eval_of_an_integer_label_output(tmp_path, capsys, test_data):
    import onnxruntime as ort
    x = test_data["image"].reshape(len(test_data["image"]), -1)
    model = str(SAMPLES / "sklearn_digit.onnx")
    predicted = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(["output_label"], {"X": x})[0]
    data = write_npz(tmp_path, X=x, label=test_data["label"])
    assert main(["eval", model, "--data", data, "--output", "output_label"]) == 0
    expected = np.mean(predicted == test_data["label"])
    assert f"top-1 accuracy {expected:.4f}" in capsys.readouterr().out
    fails(capsys, ["eval", model, "--data", data, "--output", "output_probability"], "is not a tensor")


def test_python_dash_m(tmp_path):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "onnxzip", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("onnxzip ")


def test_the_same_model_twice_is_said(tmp_path, caplog):
    assert main(zip_args(tmp_path, models=[MLP[0], MLP[0]], data=[CALIB[0]])) == 0
    said = [r.getMessage() for r in caplog.records if "are the same model" in r.getMessage()]
    assert len(said) == 1 and "'mlp_digit' and 'mlp_digit_1'" in said[0]


def test_a_file_that_is_neither_npz_nor_npy_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    line = fails(capsys, zip_args(tmp_path, data=[str(bad)]), "not a readable .npz/.npy file")
    assert line.endswith("(neither a .npz (zip) nor a .npy file)") and "pickle" not in line


def test_finetune_steps_are_named_as_finetune_names_them(tmp_path, capsys):
    zipped = tmp_path / "z.onnx"
    assert main(zip_args(tmp_path, out=zipped)) == 0
    fails(capsys, ["finetune", str(zipped), "--data", *CALIB, "-o", str(tmp_path / "t.onnx"), "--steps", "-5"],
          "--steps -5: give a number of steps >= 1")


def test_inspect_says_each_file_s_own_opset(capsys):
    assert main(["inspect", str(SAMPLES / "ln_zero_op17.onnx"), str(SAMPLES / "ln_zero.onnx")]) == 1  # (LN op vs decomposed)
    out = capsys.readouterr().out
    assert "ln_zero_op17.onnx: opset 17, inputs" in out and "ln_zero.onnx: opset 13 (read as opset 17), inputs" in out


def test_onnx_runtime_s_optimizer_warnings_stay_quiet(capfd):
    """The HF ViT pair's constant subgraphs made ONNX Runtime print 16 coloured optimizer warnings."""
    from onnxzip.tasks import load_tasks
    load_tasks([SAMPLES / "hfvit_a.onnx"], ["a"])
    assert "onnxruntime" not in capfd.readouterr().err


def test_more_bad_numbers_and_names_are_one_line(tmp_path, capsys, test_data):
    """From a newcomer walkthrough: each was a traceback, an exit 0 or a message naming the wrong thing."""
    fails(capsys, zip_args(tmp_path) + ["--max-loss-increase", "nan"], "--max-loss-increase nan: give a finite number")
    fails(capsys, zip_args(tmp_path) + ["--report", str(tmp_path / "z.onnx")],
          "--report " + str(tmp_path / "z.onnx") + ": that path is written already")
    fails(capsys, zip_args(tmp_path) + ["--report", MLP[0]], "--report " + MLP[0] + ": that is an input file")
    labelled = write_npz(tmp_path, image=test_data["image"], label=test_data["label"])
    fails(capsys, zip_args(tmp_path, data=[labelled]) + ["--labels", "lbl"],
          "is it the labels? (--labels names 'lbl', which the file lacks)")
    fails(capsys, zip_args(tmp_path, data=[labelled]), "key 'label' is not a model input (inputs: image); labels: zip, eval and finetune take them with --labels")
    fails(capsys, ["eval", MLP[0], "--data", labelled, "--output", "logits", "--labels", "image"],
          "--labels 'image' names an input of the model, not its labels")
    zipped = tmp_path / "z.onnx"
    assert main(zip_args(tmp_path, out=zipped)) == 0
    train = [str(SAMPLES / "train_digit.npz"), str(SAMPLES / "train_parity.npz")]
    for flag, value, message in (("--lr", "nan", "--lr nan: give a positive learning rate"),
                                 ("--lr", "-1", "--lr -1.0: give a positive learning rate"),
                                 ("--batch-size", "0", "--batch-size 0: must be >= 1")):
        fails(capsys, ["finetune", str(zipped), "--data", *train, "-o", str(tmp_path / "t.onnx"), flag, value], message)
    fails(capsys, ["bench", str(zipped), "--originals", *MLP, "--sizes", "0,8"], "--sizes 0,8: give positive H,W")
    assert not (tmp_path / "t.onnx").exists()


def test_hold_out_zero_is_said_as_such(tmp_path, capsys):
    assert main(["zip", *MLP, "--data", *CALIB, "-o", str(tmp_path / "z.onnx"), "--hold-out", "0"]) == 0
    out = capsys.readouterr().out
    assert "the samples the zip was fitted to (--hold-out 0):" in out and "too few to hold" not in out
    assert "not judged (--hold-out 0)" in out and "too few to judge" not in out  # (walkthrough 5: the verdict)


def test_a_zipped_model_given_as_an_original_is_one_line(tmp_path, capsys):
    zipped = tmp_path / "z.onnx"
    assert main(zip_args(tmp_path, out=zipped)) == 0
    fails(capsys, ["inspect", str(zipped)], f"{zipped}: a model onnxzip zipped (outputs <task>/<name>); give the original")
    fails(capsys, zip_args(tmp_path, models=[str(zipped), MLP[1]], out=tmp_path / "zz.onnx"), "a model onnxzip zipped")
