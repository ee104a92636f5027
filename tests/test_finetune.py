"""onnxzip.tune (labels, train) and onnxzip.finetune_model against independent oracles: the loss is the tasks'
summed cross-entropy computed in numpy from the zipped model run in ONNX Runtime; its gradient is
taken by central finite differences of a float64 copy of the model (the float parameters made inputs),
never from the code's own reverse-mode graph."""
import graphs
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import SAMPLES
from onnx import TensorProto, helper, numpy_helper

from onnxzip import InputError, UsageError, finetune_model, zip_models
from onnxzip.cli import main
from onnxzip.graph.io import check_labels
from onnxzip.tune.labels import finetune
from onnxzip.tune.train import training_model

TASKS = ("a", "b")
OUTPUTS = ["a/y", "b/y"]
CLASSES = (3, 4)


def tiny_zip(share=0.5):
    """Two MLPs 12-16-10-C (3 and 4 classes) zipped at ``share``: Gemm, Relu, Split; shared blocks."""
    models = [graphs.mlp(1, sizes=(12, 16, 10, 3)), graphs.mlp(2, sizes=(12, 16, 10, 4))]
    data = [{"x": graphs.data(3, (12,))}, {"x": graphs.data(4, (12,))}]
    return zip_models(models, data, share=share, quiet=True, names=TASKS).model


def labelled(n, seed=0):
    rng = np.random.default_rng(seed)
    xs = [graphs.data(10 + t, (12,), n=n) for t in range(2)]
    ys = [rng.integers(0, c, n) for c in CLASSES]
    return xs, ys


def trainable(model):
    """The float initializers with at least one axis (what fine-tuning trains)."""
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
            if i.data_type == TensorProto.FLOAT and len(i.dims) > 0}


def cross_entropy(logits, y):
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))


def run(model, feeds, outputs=None):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(outputs or [o.name for o in sess.get_outputs()], sess.run(outputs, feeds)))


class Float64Loss:
    """The tasks' summed mean cross-entropy as a function of the trainable parameters, by ONNX Runtime
    on a float64 copy of the model whose trainable initializers are graph inputs."""

    def __init__(self, model, xs, ys):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        self.names = list(trainable(model))
        inits = []
        for i in m.graph.initializer:
            if i.data_type != TensorProto.FLOAT:
                inits.append(i)
            elif i.name in self.names:
                m.graph.input.append(helper.make_tensor_value_info(i.name, TensorProto.DOUBLE, list(i.dims)))
            else:
                inits.append(numpy_helper.from_array(numpy_helper.to_array(i).astype(np.float64), i.name))
        del m.graph.initializer[:]
        m.graph.initializer.extend(inits)
        for v in list(m.graph.input) + list(m.graph.output):
            if v.type.tensor_type.elem_type == TensorProto.FLOAT:
                v.type.tensor_type.elem_type = TensorProto.DOUBLE
        del m.graph.value_info[:]
        self.sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        self.xs, self.ys = [x.astype(np.float64) for x in xs], ys

    def __call__(self, values):
        return sum(cross_entropy(self.sess.run([out], {"x": x, **values})[0], y)
                   for x, y, out in zip(self.xs, self.ys, OUTPUTS))

    def gradient(self, values, eps=1e-6):
        values = {n: v.astype(np.float64) for n, v in values.items()}
        grads = {}
        for name in self.names:
            g = np.zeros_like(values[name])
            for idx in np.ndindex(g.shape):
                old = values[name][idx]
                values[name][idx] = old + eps
                up = self(values)
                values[name][idx] = old - eps
                down = self(values)
                values[name][idx] = old
                g[idx] = (up - down) / (2 * eps)
            grads[name] = g
        return grads


def test_the_training_models_gradients_are_the_finite_differences_of_the_loss():
    """Each task's cross-entropy gradient seeded on its own output, summed over the tasks: shared
    tensors (used by both tasks) get the sum of both tasks' gradients."""
    model = tiny_zip()
    batch = 16
    xs, ys = labelled(batch)
    reverse, names, grads = training_model(model, batch)
    values = trainable(model)
    assert sorted(names) == sorted(values)
    sess = ort.InferenceSession(reverse.SerializeToString(), providers=["CPUExecutionProvider"])
    seeds = {i.name: i.shape[:-1] for i in sess.get_inputs() if i.name.startswith("adj_")}  # (..., directions)
    assert sorted(seeds) == sorted(f"adj_{o}" for o in OUTPUTS)
    forward = run(model, {"x": xs[0]})
    total = {n: 0.0 for n in names}
    for x, y, out in zip(xs, ys, OUTPUTS):
        zeros = {s: np.zeros(shape + [1], np.float32) for s, shape in seeds.items()}
        logits = sess.run([out], {"x": x, **values, **zeros})[0]
        np.testing.assert_allclose(logits, forward[out] if x is xs[0] else run(model, {"x": x})[out], rtol=1e-5,
                                   atol=1e-6)  # the training copy computes the same outputs
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        feeds = {"x": x, **values}
        for s, shape in seeds.items():
            seed = (p - np.eye(p.shape[1])[y]) / batch if s == f"adj_{out}" else np.zeros(shape)
            feeds[s] = seed[..., None].astype(np.float32)
        for n, g in zip(names, sess.run([grads[n] for n in names], feeds)):
            total[n] = total[n] + g[..., 0]
    oracle = Float64Loss(model, xs, ys)
    fd = oracle.gradient(values)
    for n in names:
        scale = np.abs(fd[n]).max()
        np.testing.assert_allclose(total[n], fd[n], rtol=1e-3, atol=1e-4 * scale + 1e-7, err_msg=n)
    assert any(n.startswith("shared/") for n in names)  # the test covers shared tensors


def test_one_adam_step_moves_every_weight_by_lr_against_its_gradients_sign():
    """A first Adam step with the whole data set as the batch: m/sqrt(v) = g/|g|, so each trained
    value moves by exactly lr against the sign of the full-data gradient (finite differences)."""
    model = tiny_zip()
    n, lr = 24, 1e-3
    xs, ys = labelled(n, seed=1)
    tuned = finetune(model, list(TASKS), [{"x": x} for x in xs], ys, OUTPUTS, steps=1, lr=lr, batch=n, hold_out=0)
    before, after = trainable(model), trainable(tuned)
    fd = Float64Loss(model, xs, ys).gradient(before)
    for name, g in fd.items():
        step = after[name].astype(np.float64) - before[name]
        clear = np.abs(g) > 1e-4
        assert clear.mean() > 0.5, name
        np.testing.assert_allclose(step[clear], -lr * np.sign(g[clear]), rtol=0, atol=2e-3 * lr, err_msg=name)
        assert np.all(np.abs(step) <= lr * (1 + 1e-3)), name


def test_the_tuned_model_is_the_same_graph_with_new_values():
    model = tiny_zip()
    xs, ys = labelled(40, seed=2)
    data = [{"x": x, "label": y} for x, y in zip(xs, ys)]
    tuned = finetune_model(model, data, steps=5, quiet=True)
    assert [n.SerializeToString() for n in tuned.graph.node] == [n.SerializeToString() for n in model.graph.node]
    for part in ("input", "output"):
        assert [v.SerializeToString() for v in getattr(tuned.graph, part)] == \
            [v.SerializeToString() for v in getattr(model.graph, part)]
    assert tuned.opset_import == model.opset_import and tuned.ir_version == model.ir_version
    old = {i.name: i for i in model.graph.initializer}
    new = {i.name: i for i in tuned.graph.initializer}
    assert list(new) == list(old)
    learned = trainable(model)
    changed = 0
    for name, t in new.items():
        assert (t.data_type, list(t.dims)) == (old[name].data_type, list(old[name].dims)), name
        a, b = numpy_helper.to_array(t), numpy_helper.to_array(old[name])
        if name in learned:
            changed += not np.array_equal(a, b)
        else:  # integer split sizes, scalars: untouched
            assert np.array_equal(a, b), name
    assert changed == len(learned)
    onnx.checker.check_model(tuned, full_check=True)


def test_a_few_steps_lower_the_training_loss():
    """The sample MLP pair fully shared without recovery, 20 steps: each task's cross-entropy on all
    its training data, computed in numpy from ONNX Runtime's logits, falls (measured: 0.38 -> 0.24
    and 1.25 -> 0.17 in 10 steps)."""
    models = [SAMPLES / "mlp_digit.onnx", SAMPLES / "mlp_parity.onnx"]
    zipped = zip_models(models, [SAMPLES / "calib_digit.npz", SAMPLES / "calib_parity.npz"], share=1.0,
                        names=("digit", "parity"), recover=False, quiet=True).model
    train = [dict(np.load(SAMPLES / f"train_{t}.npz")) for t in ("digit", "parity")]

    def loss(model):
        return [cross_entropy(run(model, {"image": d["image"]})[f"{t}/logits"], d["label"])
                for t, d in zip(("digit", "parity"), train)]

    before = loss(zipped)
    after = loss(finetune_model(zipped, train, steps=20, quiet=True))
    assert all(a < b for a, b in zip(after, before)) and sum(after) < 0.5 * sum(before), (before, after)


# ------------------------------------------------------------------------------- labels

@pytest.mark.parametrize("labels, message", [
    (np.array([[0, 1]]), "labels have shape (1, 2); give one class index per sample"),
    (np.array([0.5, 1.0]), "labels must be class indices, integers in [0, 3); these are float64"),
    (np.array([0, -1]), "labels must be class indices in [0, 3); these run from -1 to 0"),
    (np.array([0, 3]), "labels must be class indices in [0, 3); these run from 0 to 3"),
    (np.array(["0", "1"]), "labels must be class indices, integers in [0, 3); these are <U1")],
    ids=["2d", "fractional", "negative", "too-large", "strings"])
def test_check_labels_refuses_what_is_not_a_class_index(labels, message):
    with pytest.raises(InputError) as err:
        check_labels(labels, 3, "train.npz")
    assert str(err.value) == f"train.npz: {message}"


def test_check_labels_keeps_integers_in_range_and_whole_floats():
    got = check_labels(np.array([2, 0, 1], np.uint8), 3, "train.npz")
    assert got.dtype == np.int64 and got.tolist() == [2, 0, 1]
    assert check_labels(np.array([2.0, 0.0]), 3, "train.npz").tolist() == [2, 0]


def test_finetune_model_usage_errors():
    model = tiny_zip(0.0)
    xs, ys = labelled(8)
    data = [{"x": x, "label": y} for x, y in zip(xs, ys)]
    with pytest.raises(UsageError, match=r"^--finetune 0: give a number of steps >= 1$"):
        finetune_model(model, data, steps=0)
    with pytest.raises(UsageError, match=r"^give one labelled data file per task: 2 tasks \(a, b\), 1 files$"):
        finetune_model(model, data[:1], steps=1)
    with pytest.raises(InputError, match=r"^b: no labels key 'y'$"):
        finetune_model(model, [{"x": xs[0], "y": ys[0]}, data[1]], labels="y", steps=1)


def test_bad_in_memory_labels_are_one_line_naming_the_task():
    model = tiny_zip(0.0)
    xs, _ = labelled(8)
    with pytest.raises(InputError) as err:
        finetune_model(model, [{"x": xs[0], "label": np.zeros(8, int)}, {"x": xs[1], "label": np.full(8, 4)}],
                       steps=1)
    assert "\n" not in str(err.value) and str(err.value).startswith("b: labels must be class indices in [0, 4)")


def test_cli_finetune_with_labels_out_of_range_is_one_line(tmp_path, capsys):
    model = tmp_path / "z.onnx"
    onnx.save(tiny_zip(0.0), str(model))
    xs, ys = labelled(8)
    files = []
    for t, (x, y) in enumerate(zip(xs, ys)):
        files.append(str(tmp_path / f"{TASKS[t]}.npz"))
        np.savez(files[-1], x=x, label=y if t == 0 else np.full(8, 4))  # task b has 4 classes: 0..3
    assert main(["finetune", str(model), "--data", *files, "-o", str(tmp_path / "t.onnx"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"onnxzip: error: {files[1]}: labels must be class indices in [0, 4); these run from 4 to 4"]
    assert not (tmp_path / "t.onnx").exists()
