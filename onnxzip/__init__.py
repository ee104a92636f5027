"""onnxzip: zip several same-architecture ONNX models into one multi-task model (Multi-Task Zipping)."""
__version__ = "0.1.0"  # before the imports below: the report records it

from .errors import (  # noqa: E402
                     EquivalenceError,
                     InputError,
                     InternalError,
                     MismatchError,
                     NumericalError,
                     OnnxzipError,
                     UnsupportedOpError,
                     UsageError,
)

#: the public API, imported on first use (``import onnxzip`` stays light: the command line can
#: then say "interrupted" for a Ctrl-C while onnx and ONNX Runtime load)
_LAZY = {"zip_models": ".api", "finetune_model": ".api", "accuracy_of": ".api", "ZipOptions": ".options",
         "ZipResult": ".result"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'onnxzip' has no attribute {name!r}")


__all__ = ["zip_models", "finetune_model", "ZipOptions", "ZipResult", "accuracy_of", "OnnxzipError", "InputError",
           "MismatchError", "UnsupportedOpError", "NumericalError", "UsageError", "EquivalenceError", "InternalError"]
