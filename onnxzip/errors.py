"""The exception hierarchy. Each message is one line: what is wrong, where, what to do.

Only :class:`OnnxzipError` subclasses are user errors (the CLI prints them and exits 2);
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class OnnxzipError(Exception):
    """A problem with the user's input or options."""


class InputError(OnnxzipError):
    """Unreadable or non-ONNX file, output path equal to an input, bad calibration data."""


class MismatchError(OnnxzipError):
    """The models do not have the same architecture."""


class UnsupportedOpError(OnnxzipError):
    """An op onnxzip cannot handle in this position; the message names the node."""


class NumericalError(OnnxzipError):
    """Statistics are unusable (NaN/Inf) or a system stays singular after damping."""


class UsageError(OnnxzipError):
    """Bad option values or an unknown method name."""


class InternalError(RuntimeError):
    """A graph onnxzip built itself cannot be run: a bug in onnxzip, never a user error."""


class EquivalenceError(RuntimeError):
    """The emitted model does not reproduce what it must: a bug in onnxzip, never a user error."""
