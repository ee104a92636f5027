"""Train and export the sample model pairs shipped under ``samples/``.

Data: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, no download).
Three tasks on the same images:

* ``digit``  -- the digit class (10-way);
* ``parity`` -- whether the digit is odd (2-way), a task correlated with the first;
* ``mod3``   -- the digit modulo 3 (3-way), a third correlated task.

For each task, trained from scratch with its own seed as separate teams would:

* an MLP (LeNet-300-100 shape, 64-300-100-out), torch's legacy exporter (Gemm);
* a LeNet-5 style CNN (conv-BN-relu-pool x2, then 128-120-84-out), the dynamo exporter;
* a small ResNet (stem, an identity block, a stride-2 projection block, global pooling), the
  dynamo exporter, and for ``digit`` also the legacy exporter (``resnet_digit_legacy.onnx``);
* for ``digit`` and ``parity``, a scikit-learn MLPClassifier (64-64-32) converted by skl2onnx
  (MatMul/Add/Relu, ZipMap output).

Also three binary *detectors* on the same split, shaped like on-device wake-word detectors
(Flatten -> Gemm -> LayerNorm -> ReLU -> Gemm -> LayerNorm -> ReLU -> Gemm -> Sigmoid, output
``prob`` (N, 1)), trained with binary cross-entropy on rare positives: ``zero`` (digit == 0),
``seven`` (digit == 7), ``small`` (digit < 3). Exported by the legacy exporter at opset 13 with
the batch fixed at 1 (``ln_<task>.onnx``: LayerNorm decomposed into ReduceMean/Sub/Pow/Sqrt/
Div/Mul/Add), and the ``zero`` detector once more at opset 17 with a dynamic batch
(``ln_zero_op17.onnx``: one LayerNormalization node per LayerNorm).

Also two small vision transformers per task (``vit_<task>.onnx``) and a BERT-style pair with random
weights (``bert_a.onnx``, ``bert_b.onnx``, from a ``transformers`` config; no download).

Needs the ``[samples]`` extra (``pip install torch==2.13.0 scikit-learn skl2onnx transformers``, CPU wheel).
Run from the repository root: ``python tools/make_samples.py``; ``--only ln`` remakes just the
detectors (and their lines in ``samples/README.md``), leaving every other sample file as it is.
Deterministic: fixed split, fixed seeds, single thread.
"""
from __future__ import annotations

import argparse
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

TASKS = {"digit": 10, "parity": 2, "mod3": 3}
LN_TASKS = ("zero", "seven", "small")  # binary detectors; task index continues after TASKS
N_TEST = 597
N_CALIB = 256
INPUT = "image"


def labels_for(task: str, digits: np.ndarray) -> np.ndarray:
    return {"digit": digits, "parity": digits % 2, "mod3": digits % 3}[task]


def ln_labels(task: str, digits: np.ndarray) -> np.ndarray:
    return {"zero": digits == 0, "seven": digits == 7, "small": digits < 3}[task].astype(np.int64)


def ln_mlp() -> nn.Module:
    """A wake-word style detector: two LayerNorm'd hidden layers, one sigmoid output."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 128), nn.LayerNorm(128), nn.ReLU(), nn.Linear(128, 128), nn.LayerNorm(128),
        nn.ReLU(), nn.Linear(128, 1), nn.Sigmoid())


def mlp(n_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, n_out)
    )


def cnn(n_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, n_out),
    )


class Block(nn.Module):
    """A basic residual block; a 1x1 projection where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.proj = None if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return torch.relu(self.body(x) + (x if self.proj is None else self.proj(x)))


def resnet(n_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        Block(16, 16, 1), Block(16, 32, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, n_out))


class ViT(nn.Module):
    """A small vision transformer on the 8x8 digits: 2x2 patches as 16 tokens plus a class token,
    learned positions, pre-norm encoder layers (4 heads, GELU), a final LayerNorm, a linear head on
    the class token."""

    def __init__(self, n_out: int, dim: int = 32, heads: int = 4, ff: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_out)

    def forward(self, input):  # (the dynamo export names the batch axis of ``input``)
        n = input.shape[0]
        x = input.reshape(n, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(n, 16, 4)
        x = torch.cat([self.cls.expand(n, -1, -1), self.embed(x)], dim=1) + self.pos
        return self.head(self.norm(self.encoder(x))[:, 0])


def make_vits(out: Path, images: np.ndarray, digits: np.ndarray, test_idx: np.ndarray, train_idx: np.ndarray,
              epochs: int) -> dict[str, float]:
    """The ViT of each task (dynamo exporter; for ``digit`` and ``parity`` also the legacy one) and their test
    accuracies. Uses the tasks' calib/test/train files."""
    summary = {}
    for t, (task, n_out) in enumerate(TASKS.items()):
        y = labels_for(task, digits)
        seed = 10 * t + 5
        torch.manual_seed(seed)
        model = train(ViT(n_out), images[train_idx], y[train_idx], seed, epochs)
        acc = accuracy(model, images[test_idx], y[test_idx])
        export(model, out / f"vit_{task}.onnx", True)
        if task != "mod3":
            export(model, out / f"vit_{task}_legacy.onnx", False)
        summary[f"vit_{task}"] = round(acc, 4)
        print(f"vit_{task}: test accuracy {acc:.4f}")
    return summary


def make_berts(out: Path) -> None:
    """Two BERT-style sequence classifiers built from a ``transformers`` config with random weights
    (no download): vocabulary 100, width 32, 2 post-norm layers of 4 heads, feed-forward 64, pooler,
    3 and 2 classes; legacy exporter, opset 17, batch and sequence length dynamic. Calibration:
    random token ids with an attention mask that pads a third of the sequences."""
    from transformers import BertConfig, BertForSequenceClassification
    for tag, seed, classes in (("a", 1, 3), ("b", 2, 2)):
        config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=32, num_labels=classes,
                            attn_implementation="eager")
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config).eval()
        example = (torch.randint(0, 100, (2, 12)), torch.ones(2, 12, dtype=torch.long))
        dynamic = {"batch": 0, "seq": 1}
        torch.onnx.export(model, example, str(out / f"bert_{tag}.onnx"), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={"input_ids": {v: k for k, v in dynamic.items()},
                                        "attention_mask": {v: k for k, v in dynamic.items()}, "logits": {0: "batch"}})
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 100, (N_CALIB, 12)).astype(np.int64)
    mask = np.ones((N_CALIB, 12), np.int64)
    mask[::3, 8:] = 0
    savez_fixed(out / "calib_bert.npz", input_ids=ids, attention_mask=mask)
    print("bert_a, bert_b: random weights")
    make_hf_others(out)


class _Logits(nn.Module):
    """A ``transformers`` model with one positional input and its logits as the one output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits


def make_hf_others(out: Path) -> None:
    """Two more random-weight ``transformers`` pairs, for structure: a GPT-2 decoder (vocabulary 64,
    width 32, 2 layers of 4 heads, causal; fused Q/K/V split by a Split op, Conv1D as addmm) and a
    ViT image classifier (16x16x3 images, 4x4 patches by a Conv, width 32, 2 layers of 4 heads).
    Legacy exporter at opset 17; calibration ``calib_gpt2.npz`` (``ids``, 10 random tokens) and
    ``calib_hfvit.npz`` (``pixels``, normal noise)."""
    from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTForImageClassification
    for tag, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        gpt = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                         attn_implementation="eager")).eval()
        torch.onnx.export(_Logits(gpt), (torch.randint(0, 64, (2, 10)),), str(out / f"gpt2_{tag}.onnx"), dynamo=False,
                          opset_version=17, input_names=["ids"], output_names=["logits"],
                          dynamic_axes={"ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}})
        torch.manual_seed(seed)
        vit = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                                                  num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                                  num_labels=5, attn_implementation="eager")).eval()
        torch.onnx.export(_Logits(vit), (torch.randn(2, 3, 16, 16),), str(out / f"hfvit_{tag}.onnx"), dynamo=False,
                          opset_version=17, input_names=["pixels"], output_names=["logits"],
                          dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}})
    rng = np.random.default_rng(4)
    savez_fixed(out / "calib_gpt2.npz", ids=rng.integers(0, 64, (N_CALIB, 10)).astype(np.int64))
    savez_fixed(out / "calib_hfvit.npz", pixels=rng.normal(size=(64, 3, 16, 16)).astype(np.float32))
    print("gpt2_a, gpt2_b, hfvit_a, hfvit_b: random weights")


def sklearn_mlp(task: str, x: np.ndarray, y: np.ndarray, seed: int, path: Path) -> float:
    """Train scikit-learn's MLPClassifier and convert it with skl2onnx (ZipMap output kept)."""
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier
    clf = MLPClassifier((64, 32), max_iter=400, random_state=seed).fit(x[0], y[0])
    onx = to_onnx(clf, x[0][:1].astype(np.float32), target_opset={"": 17, "ai.onnx.ml": 3})
    path.write_bytes(onx.SerializeToString())
    return float(clf.score(x[1], y[1]))


def _fit(model: nn.Module, forward: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module, seed: int,
         epochs: int, lr: float = 2e-3) -> nn.Module:
    """Adam on ``loss_fn(forward(x), y)`` in shuffled batches of 64 (``forward``: the model or a part)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            loss_fn(forward(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, seed: int, epochs: int) -> nn.Module:
    return _fit(model, model, torch.from_numpy(x), torch.from_numpy(y).long(), nn.CrossEntropyLoss(), seed, epochs)


def train_detector(model: nn.Sequential, x: np.ndarray, y: np.ndarray, seed: int, epochs: int) -> nn.Module:
    """Binary cross-entropy on the logit (the model without its final Sigmoid), for stability."""
    return _fit(model, model[:-1], torch.from_numpy(x), torch.from_numpy(y).float()[:, None], nn.BCEWithLogitsLoss(),
                seed, epochs)


def detector_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy at threshold 0.5 (positive where prob > 0.5)."""
    with torch.no_grad():
        return float(((model(torch.from_numpy(x))[:, 0].numpy() > 0.5) == y).mean())


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def export(model: nn.Module, path: Path, dynamo: bool) -> None:
    example = (torch.zeros(2, 1, 8, 8),)
    out_name = "logits"
    if dynamo:
        batch = torch.export.Dim("batch")
        torch.onnx.export(model, example, str(path), dynamo=True, input_names=[INPUT], output_names=[out_name],
                          dynamic_shapes={"input": {0: batch}}, external_data=False)
    else:
        torch.onnx.export(model, example, str(path), dynamo=False, input_names=[INPUT], output_names=[out_name],
                          dynamic_axes={INPUT: {0: "batch"}, out_name: {0: "batch"}}, opset_version=17)


def export_detector(model: nn.Module, path: Path, opset: int, dynamic: bool) -> None:
    """Legacy exporter; batch fixed at 1 unless ``dynamic``."""
    example = (torch.zeros(1, 1, 8, 8),)
    axes = {INPUT: {0: "batch"}, "prob": {0: "batch"}} if dynamic else None
    torch.onnx.export(model, example, str(path), dynamo=False, input_names=[INPUT], output_names=["prob"],
                      dynamic_axes=axes, opset_version=opset)


def savez_fixed(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` with a fixed zip timestamp, so reruns give the same bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(a), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def make_detectors(out: Path, images: np.ndarray, digits: np.ndarray, test_idx: np.ndarray,
                   train_idx: np.ndarray, epochs: int) -> dict[str, float]:
    """The LayerNorm detectors, their label files and their test accuracies."""
    summary = {}
    for t, task in enumerate(LN_TASKS, start=len(TASKS)):
        y = ln_labels(task, digits)
        calib = np.random.default_rng(100 + t).choice(train_idx, N_CALIB, replace=False)
        savez_fixed(out / f"calib_ln_{task}.npz", **{INPUT: images[np.sort(calib)]})
        savez_fixed(out / f"test_ln_{task}.npz", **{INPUT: images[test_idx], "label": y[test_idx]})
        seed = 10 * t + 4
        torch.manual_seed(seed)
        model = train_detector(ln_mlp(), images[train_idx], y[train_idx], seed, epochs)
        acc = detector_accuracy(model, images[test_idx], y[test_idx])
        export_detector(model, out / f"ln_{task}.onnx", 13, dynamic=False)
        if task == "zero":
            export_detector(model, out / f"ln_{task}_op17.onnx", 17, dynamic=True)
        summary[f"ln_{task}"] = round(acc, 4)
        print(f"ln_{task}: test accuracy {acc:.4f}")
    return summary


#: the fine-tunes of one checkpoint: a ResNet base trained on ``digit``, copies fine-tuned (every weight,
#: a new head) on these tasks
FT_TASKS = ("parity", "mod3")


def make_finetuned(out: Path, images: np.ndarray, digits: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray,
                   epochs: int) -> dict[str, float]:
    """``ft_<task>.onnx``: one ResNet base trained on the digit class, then each copy fine-tuned on its
    task with a new head, all weights moving (the commonest real pair: one backbone, two tasks)."""
    import copy
    summary = {}
    torch.manual_seed(50)
    base = train(resnet(TASKS["digit"]), images[train_idx], labels_for("digit", digits)[train_idx], 50, epochs)
    start = {k: v.clone() for k, v in base.state_dict().items()}
    for i, task in enumerate(FT_TASKS):
        y = labels_for(task, digits)
        model = copy.deepcopy(base)
        torch.manual_seed(60 + i)
        model[-1] = nn.Linear(model[-1].in_features, TASKS[task])
        model = _fit(model, model, torch.from_numpy(images[train_idx]), torch.from_numpy(y[train_idx]).long(),
                     nn.CrossEntropyLoss(), 60 + i, max(1, epochs // 4), lr=3e-4)
        moved = [float((v - start[k]).norm() / start[k].norm()) for k, v in model.state_dict().items()
                 if k in start and v.shape == start[k].shape and v.dtype.is_floating_point and start[k].norm() > 0]
        acc = accuracy(model, images[test_idx], y[test_idx])
        export(model, out / f"ft_{task}.onnx", dynamo=True)
        summary[f"ft_{task}"] = round(acc, 4)
        print(f"ft_{task}: test accuracy {acc:.4f}; weights moved from the base by {np.median(moved):.0%} (median)")
    return summary


def old_summary(readme: Path) -> dict[str, float]:
    """The accuracy lines of an existing README (to keep them when only some samples are remade)."""
    if not readme.exists():
        return {}
    text = readme.read_text().split("Test accuracy of the originals:", 1)[-1]
    return {k: float(v) for k, v in re.findall(r"^- (\w+): ([0-9.]+)$", text, re.M)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="samples", help="output folder (default: samples)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--ln-epochs", type=int, default=60, help="epochs for the LayerNorm detectors")
    parser.add_argument("--vit-epochs", type=int, default=60, help="epochs for the vision transformers")
    parser.add_argument("--only", choices=("all", "ln", "vit", "bert", "finetuned"), default="all",
                        help="ln / vit / bert: remake only the LayerNorm detectors / the vision transformers / the "
                             "BERT pair, keep the other samples as they are")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    order = np.random.default_rng(0).permutation(len(images))
    test_idx, train_idx = order[:N_TEST], order[N_TEST:]
    summary = old_summary(out / "README.md") if args.only != "all" else {}
    for t, (task, n_out) in enumerate(TASKS.items() if args.only == "all" else ()):
        y = labels_for(task, data.target)
        calib = np.random.default_rng(100 + t).choice(train_idx, N_CALIB, replace=False)
        np.savez_compressed(out / f"calib_{task}.npz", **{INPUT: images[np.sort(calib)]})
        np.savez_compressed(out / f"test_{task}.npz", **{INPUT: images[test_idx], "label": y[test_idx]})
        np.savez_compressed(out / f"train_{task}.npz", **{INPUT: images[train_idx], "label": y[train_idx]})
        for arch, make, dynamo in (("mlp", mlp, False), ("cnn", cnn, True), ("resnet", resnet, True)):
            seed = 10 * t + {"mlp": 1, "cnn": 2, "resnet": 3}[arch]
            torch.manual_seed(seed)
            model = train(make(n_out), images[train_idx], y[train_idx], seed, args.epochs)
            acc = accuracy(model, images[test_idx], y[test_idx])
            export(model, out / f"{arch}_{task}.onnx", dynamo)
            if arch == "resnet" and task == "digit":
                export(model, out / f"{arch}_{task}_legacy.onnx", False)
            summary[f"{arch}_{task}"] = round(acc, 4)
            print(f"{arch}_{task}: test accuracy {acc:.4f}")
        if task != "mod3":
            flat = images.reshape(len(images), -1)
            acc = sklearn_mlp(task, (flat[train_idx], flat[test_idx]), (y[train_idx], y[test_idx]), 7 + t,
                              out / f"sklearn_{task}.onnx")
            np.savez_compressed(out / f"calib_flat_{task}.npz", X=flat[np.sort(calib)])
            summary[f"sklearn_{task}"] = round(acc, 4)
            print(f"sklearn_{task}: test accuracy {acc:.4f}")
    if args.only in ("all", "ln"):
        summary.update(make_detectors(out, images, data.target, test_idx, train_idx, args.ln_epochs))
    if args.only in ("all", "vit"):
        summary.update(make_vits(out, images, data.target, test_idx, train_idx, args.vit_epochs))
    if args.only in ("all", "bert"):
        make_berts(out)
    if args.only in ("all", "finetuned"):
        summary.update(make_finetuned(out, images, data.target, train_idx, test_idx, args.epochs))
    (out / "README.md").write_text(
        "# Sample models\n\nMade by `python tools/make_samples.py` (scikit-learn digits, PyTorch CPU, fixed seeds).\n\n"
        f"- `calib_<task>.npz`: {N_CALIB} unlabeled calibration images per task, key `{INPUT}` (N, 1, 8, 8) float32.\n"
        f"- `test_<task>.npz`: the {N_TEST} held-out images (`{INPUT}`) and their labels (`label`).\n"
        f"- `train_<task>.npz`: the {1797 - N_TEST} training images and labels (for light retraining).\n"
        "- `mlp_<task>.onnx` (legacy exporter, Gemm) and `cnn_<task>.onnx` (dynamo exporter, Reshape; it folds BN itself).\n"
        "- `resnet_<task>.onnx` (dynamo exporter) and `resnet_digit_legacy.onnx` (the same digit model, legacy exporter).\n"
        "- `sklearn_<task>.onnx`: scikit-learn MLPClassifier via skl2onnx (input `X` (N, 64), ZipMap output); "
        "calibration in `calib_flat_<task>.npz`.\n"
        "- Tasks: `digit` (10 classes), `parity` (odd digit, 2 classes), `mod3` (digit mod 3, 3 classes), "
        "on the same images.\n"
        "- `ln_<task>.onnx`: binary detectors shaped like on-device wake-word models (Flatten, Gemm 64-128, LayerNorm, "
        "ReLU, Gemm 128-128, LayerNorm, ReLU, Gemm 128-1, Sigmoid; output `prob` (1, 1)), legacy exporter at opset 13 "
        "with the batch fixed at 1, so each LayerNorm is decomposed (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add). "
        "Detector tasks (BCE-trained, rare positives): `zero` (digit == 0), `seven` (digit == 7), `small` (digit < 3).\n"
        "- `ln_zero_op17.onnx`: the same `zero` detector exported at opset 17 with a dynamic batch "
        "(one LayerNormalization node per LayerNorm).\n"
        f"- `calib_ln_<task>.npz`: {N_CALIB} calibration images per detector (`{INPUT}`); `test_ln_<task>.npz`: "
        f"the same {N_TEST} held-out images as `test_<task>.npz` with 0/1 int64 labels (`label`). "
        "Detector accuracy is at threshold 0.5 on `prob`.\n"
        "- `vit_<task>.onnx`: a small vision transformer per task (2x2 patches as 16 tokens and a class token, width 32, "
        "2 pre-norm encoder layers of 4 heads, GELU feed-forward 64, final LayerNorm, linear head on the class token), "
        "dynamo exporter (opset 20); `vit_digit_legacy.onnx`, `vit_parity_legacy.onnx`: the same models, legacy "
        "exporter (opset 17). "
        "Same calibration, test and training files as the other models of each task.\n"
        "- `bert_a.onnx`, `bert_b.onnx`: BERT-style sequence classifiers from a `transformers` config with random "
        "weights (vocabulary 100, width 32, 2 post-norm layers of 4 heads, feed-forward 64, pooler; 3 and 2 classes), "
        "legacy exporter at opset 17, batch and sequence length dynamic; `calib_bert.npz`: 256 random sequences of "
        "12 token ids (`input_ids`) and an `attention_mask` that pads every third one after 8 tokens.\n"
        "- `gpt2_a.onnx`, `gpt2_b.onnx` (a GPT-2 decoder: vocabulary 64, width 32, 2 layers of 4 heads; output "
        "`logits` per token) and `hfvit_a.onnx`, `hfvit_b.onnx` (a `transformers` ViT classifier: 16x16x3 images, "
        "4x4 patches by a Conv, width 32, 2 layers, 5 classes): random weights from `transformers` configs, legacy "
        "exporter at opset 17; calibration `calib_gpt2.npz` (`ids`: 256 x 10 random tokens) and `calib_hfvit.npz` "
        "(`pixels`: 64 normal-noise images).\n"
        "- `ft_parity.onnx`, `ft_mod3.onnx`: fine-tunes of one checkpoint: a ResNet (as above) trained on `digit`, "
        "then each copy fine-tuned on its task for a quarter of the epochs at a seventh of the learning rate with a new head, every weight moving (dynamo "
        "exporter); the `parity` and `mod3` calibration and test files.\n"
        "- `python tools/make_samples.py --only ln` (or `--only vit`, `--only bert`, `--only finetuned`) remakes only "
        "those files and "
        "their README lines.\n\n"
        "Test accuracy of the originals:\n\n" + "\n".join(f"- {k}: {v:.4f}" for k, v in summary.items()) + "\n"
    )


if __name__ == "__main__":
    main()
