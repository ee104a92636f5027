"""A BERT-base-size pair with random weights, built from a ``transformers`` config (no downloads).

12 layers x 768, 12 heads, feed-forward 3072, vocabulary 30,522 (``BertConfig()``'s defaults: 110 M
parameters each), a two-class sequence classifier; exported by torch's legacy exporter with a dynamic
batch and sequence, inputs ``input_ids`` and ``attention_mask``. Also writes calibration data:
``--sequences`` sequences of ``--tokens`` token ids (seeded).

    pip install torch==2.13.0 transformers     # tools only; onnxzip itself needs neither
    python tools/make_bert_base.py OUT_DIR [--sequences 128] [--tokens 128]

writes ``OUT_DIR/bert_base_a.onnx``, ``bert_base_b.onnx`` and ``calib_bert_base.npz``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def export(seed: int, path: Path) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(num_labels=2, attn_implementation="eager")).eval()

    class Classifier(torch.nn.Module):  # positional inputs, one output
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    ids = torch.randint(1000, 2000, (2, 16))
    axes = {0: "batch", 1: "seq"}
    torch.onnx.export(Classifier().eval(), (ids, torch.ones_like(ids)), str(path), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--sequences", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for tag, seed in (("a", 1), ("b", 2)):
        export(seed, args.out / f"bert_base_{tag}.onnx")
        print(args.out / f"bert_base_{tag}.onnx")
    ids = np.random.default_rng(0).integers(1000, 30000, (args.sequences, args.tokens)).astype(np.int64)
    np.savez(args.out / "calib_bert_base.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    print(args.out / "calib_bert_base.npz")


if __name__ == "__main__":
    main()
