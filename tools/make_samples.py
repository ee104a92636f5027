"""Train and export the sample model pairs shipped under ``samples/``.

Data: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, no download).
Two tasks on the same images:

* ``digit``  -- the digit class (10-way);
* ``parity`` -- whether the digit is odd (2-way), a task correlated with the first.

For each task an MLP (LeNet-300-100 shape, 64-300-100-out) and a small LeNet-5 style CNN
(conv-BN-relu-pool x2, then 64-120-84-out) are trained from scratch with their own seeds,
as two teams would. The MLPs are exported with torch's legacy exporter (Gemm), the CNNs
with the dynamo exporter, so both export styles are covered.

Needs the ``[samples]`` extra (``pip install torch==2.13.0 scikit-learn``, CPU wheel).
Run from the repository root: ``python tools/make_samples.py``. Deterministic: fixed split,
fixed seeds, single thread.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

TASKS = {"digit": 10, "parity": 2}
N_TEST = 597
N_CALIB = 256
INPUT = "image"


def labels_for(task: str, digits: np.ndarray) -> np.ndarray:
    return digits if task == "digit" else digits % 2


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


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, seed: int, epochs: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="samples", help="output folder (default: samples)")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    order = np.random.default_rng(0).permutation(len(images))
    test_idx, train_idx = order[:N_TEST], order[N_TEST:]
    summary = {}
    for t, (task, n_out) in enumerate(TASKS.items()):
        y = labels_for(task, data.target)
        calib = np.random.default_rng(100 + t).choice(train_idx, N_CALIB, replace=False)
        np.savez_compressed(out / f"calib_{task}.npz", **{INPUT: images[np.sort(calib)]})
        np.savez_compressed(out / f"test_{task}.npz", **{INPUT: images[test_idx], "label": y[test_idx]})
        for arch, make, dynamo in (("mlp", mlp, False), ("cnn", cnn, True)):
            seed = 10 * t + (1 if arch == "mlp" else 2)
            torch.manual_seed(seed)
            model = train(make(n_out), images[train_idx], y[train_idx], seed, args.epochs)
            acc = accuracy(model, images[test_idx], y[test_idx])
            export(model, out / f"{arch}_{task}.onnx", dynamo)
            summary[f"{arch}_{task}"] = round(acc, 4)
            print(f"{arch}_{task}: test accuracy {acc:.4f}")
    (out / "README.md").write_text(
        "# Sample models\n\nMade by `python tools/make_samples.py` (scikit-learn digits, PyTorch CPU, fixed seeds).\n\n"
        f"- `calib_<task>.npz`: {N_CALIB} unlabeled calibration images per task, key `{INPUT}` (N, 1, 8, 8) float32.\n"
        f"- `test_<task>.npz`: the {N_TEST} held-out images (`{INPUT}`) and their labels (`label`).\n"
        "- `mlp_<task>.onnx` (legacy exporter, Gemm) and `cnn_<task>.onnx` (dynamo exporter, Reshape; it folds BN itself).\n"
        "- Tasks: `digit` (10 classes) and `parity` (odd digit, 2 classes), on the same images.\n\n"
        "Test accuracy of the originals:\n\n" + "\n".join(f"- {k}: {v:.4f}" for k, v in summary.items()) + "\n"
    )


if __name__ == "__main__":
    main()
