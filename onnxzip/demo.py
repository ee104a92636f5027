"""The shipped demo: zip the sample pairs at several sharing levels and measure test accuracy."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from .api import accuracy_of, zip_models
from .errors import InputError
from .graph import io
from .options import ZipOptions

TASKS = ("digit", "parity")
ARCHS = ("mlp", "cnn", "resnet")
THREE = ("digit", "parity", "mod3")
DETECTORS = ("zero", "seven", "small")  # LayerNorm MLP detectors (sigmoid score, batch fixed at 1)
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def samples_dir(given: str | None = None) -> Path:
    """``given``, else the ``samples/`` folder of the source checkout this package runs from."""
    path = Path(given) if given else Path(__file__).resolve().parent.parent / "samples"
    if not (path / "calib_digit.npz").is_file():
        raise InputError(f"{path}: no onnxzip samples here; run from a source checkout or pass --samples DIR")
    return path


def run_demo(samples: Path, shares: tuple[float, ...] = SHARES, archs: tuple[str, ...] = ARCHS,
             options: ZipOptions | None = None) -> Iterator[dict[str, Any]]:
    """Yield one row per (architecture, share): parameters kept and each task's test accuracy,
    with the originals' accuracy alongside."""
    calib = [samples / f"calib_{t}.npz" for t in TASKS]
    tests = [io.load_arrays(samples / f"test_{t}.npz") for t in TASKS]
    for arch in archs:
        models = [samples / f"{arch}_{t}.onnx" for t in TASKS]
        base = [accuracy_of(m, {"image": d["image"]}, d["label"], "logits") for m, d in zip(models, tests)]
        for share in shares:
            result = zip_models(models, calib, options, share=share, names=TASKS)
            acc = [accuracy_of(result.model, {"image": d["image"]}, d["label"], f"{t}/logits")
                   for t, d in zip(TASKS, tests)]
            yield {"arch": arch, "share": share,
                   "params_kept": result.summary.params_kept,
                   "accuracy": dict(zip(TASKS, acc)), "original": dict(zip(TASKS, base)),
                   "seconds": result.summary.seconds}


def run_three(samples: Path, share: float = 0.5, options: ZipOptions | None = None) -> dict[str, Any]:
    """Zip the three sample CNNs (digit, parity, mod3) into one model; accuracy per task."""
    models = [samples / f"cnn_{t}.onnx" for t in THREE]
    tests = [io.load_arrays(samples / f"test_{t}.npz") for t in THREE]
    result = zip_models(models, [samples / f"calib_{t}.npz" for t in THREE], options, share=share, names=THREE)
    acc = {t: accuracy_of(result.model, {"image": d["image"]}, d["label"], f"{t}/logits") for t, d in zip(THREE, tests)}
    base = {t: accuracy_of(m, {"image": d["image"]}, d["label"], "logits") for t, m, d in zip(THREE, models, tests)}
    return {"share": share, "params_kept": result.summary.params_kept,
            "accuracy": acc, "original": base, "seconds": result.summary.seconds}


def run_budget(samples: Path, target: float = 0.6, arch: str = "cnn", options: ZipOptions | None = None
               ) -> dict[str, Any]:
    """Zip a sample pair under an automatic parameter budget; accuracy per task."""
    models = [samples / f"{arch}_{t}.onnx" for t in TASKS]
    tests = [io.load_arrays(samples / f"test_{t}.npz") for t in TASKS]
    result = zip_models(models, [samples / f"calib_{t}.npz" for t in TASKS], options, names=TASKS,
                        target_params=target)
    acc = {t: accuracy_of(result.model, {"image": d["image"]}, d["label"], f"{t}/logits") for t, d in zip(TASKS, tests)}
    base = {t: accuracy_of(m, {"image": d["image"]}, d["label"], "logits") for t, m, d in zip(TASKS, models, tests)}
    return {"arch": arch, "target": target, "params_kept": result.summary.params_kept,
            "accuracy": acc, "original": base, "counts": result.summary.budget.counts}


def run_detectors(samples: Path, target: float = 0.5, options: ZipOptions | None = None) -> dict[str, Any]:
    """Zip the three LayerNorm detectors under a parameter budget; test accuracy per task."""
    models = [samples / f"ln_{t}.onnx" for t in DETECTORS]
    tests = [io.load_arrays(samples / f"test_ln_{t}.npz") for t in DETECTORS]
    result = zip_models(models, [samples / f"calib_ln_{t}.npz" for t in DETECTORS], options, names=DETECTORS,
                        target_params=target)
    acc = {t: accuracy_of(result.model, {"image": d["image"]}, d["label"], f"{t}/prob")
           for t, d in zip(DETECTORS, tests)}
    base = {t: accuracy_of(m, {"image": d["image"]}, d["label"], "prob") for t, m, d in zip(DETECTORS, models, tests)}
    return {"target": target, "params_kept": result.summary.params_kept,
            "accuracy": acc, "original": base}
