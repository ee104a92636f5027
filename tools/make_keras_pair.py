"""Train and export a Keras/TensorFlow CNN pair with tf2onnx (``samples/keras_<task>.onnx``).

The pair a TensorFlow team would hand over: NHWC input ``image`` (N, 8, 8, 1), Conv2D-BatchNorm-ReLU
twice, Flatten, Dense-ReLU, Dense logits; trained from scratch per task (``digit`` 10-way,
``parity`` 2-way) with its own seed on the same split of scikit-learn's digits as the other
samples (the NCHW arrays of ``samples/train_<task>.npz`` transposed to NHWC). tf2onnx flattens
after a Transpose to NHWC, so channel c of the last conv reaches the Dense at features c, C+c,
2C+c, ...: the case onnxzip's ``channels_last_flatten`` normalization pass exists for.

Writes ``samples/keras_<task>.onnx`` and the NHWC calibration and test sets
``samples/{calib,test}_nhwc_<task>.npz`` (key ``image``, and ``label`` in the test sets).

Needs TensorFlow and tf2onnx, which conflict with onnxzip's own environment (protobuf): run it in a
separate one: ``python -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu tf2onnx`` and
``/tmp/tf/bin/python tools/make_keras_pair.py`` from the repository root.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
TASKS = {"digit": (10, 1), "parity": (2, 2)}  # task -> (classes, seed)


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def build(classes: int, seed: int):
    import tensorflow as tf
    tf.keras.utils.set_random_seed(seed)
    layers = tf.keras.layers
    x = inp = tf.keras.Input((8, 8, 1), name="image")
    for width in (8, 16):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(32, activation="relu")(x)
    out = layers.Dense(classes, name="logits")(x)
    model = tf.keras.Model(inp, out)
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def main() -> None:
    import tensorflow as tf
    import tf2onnx
    for task, (classes, seed) in TASKS.items():
        train, test = (np.load(SAMPLES / f"{s}_{task}.npz") for s in ("train", "test"))
        model = build(classes, seed)
        model.fit(nhwc(train["image"]), train["label"], epochs=30, batch_size=32, verbose=0)
        acc = model.evaluate(nhwc(test["image"]), test["label"], verbose=0)[1]
        spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="image"),)
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=str(SAMPLES / f"keras_{task}.onnx"))
        np.savez_compressed(SAMPLES / f"calib_nhwc_{task}.npz", image=nhwc(np.load(SAMPLES / f"calib_{task}.npz")["image"]))
        np.savez_compressed(SAMPLES / f"test_nhwc_{task}.npz", image=nhwc(test["image"]), label=test["label"])
        print(f"keras_{task}.onnx: test accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
