"""onnxzip: zip several same-architecture ONNX models into one multi-task model (Multi-Task Zipping)."""
from .api import ZipOptions, ZipResult, accuracy_of, finetune_model, zip_models
from .errors import (EquivalenceError, InputError, MismatchError, NumericalError, OnnxzipError, UnsupportedOpError,
                     UsageError)

__version__ = "0.1.0"
__all__ = ["zip_models", "finetune_model", "ZipOptions", "ZipResult", "accuracy_of", "OnnxzipError", "InputError", "MismatchError",
           "UnsupportedOpError", "NumericalError", "UsageError", "EquivalenceError"]
