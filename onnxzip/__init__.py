"""onnxzip: zip several same-architecture ONNX models into one multi-task model (Multi-Task Zipping)."""
__version__ = "0.1.0"  # before the imports below: the report records it

from .api import accuracy_of, finetune_model, zip_models  # noqa: E402
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
from .options import ZipOptions  # noqa: E402
from .result import ZipResult  # noqa: E402

__all__ = ["zip_models", "finetune_model", "ZipOptions", "ZipResult", "accuracy_of", "OnnxzipError", "InputError",
           "MismatchError", "UnsupportedOpError", "NumericalError", "UsageError", "EquivalenceError", "InternalError"]
