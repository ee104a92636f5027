"""Reading and writing files: ONNX models (external data included) and calibration arrays."""
from __future__ import annotations

import glob
import hashlib
import os
import re
import secrets
import shutil
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import numpy_helper
from google.protobuf.message import DecodeError

from ..errors import InputError
from . import stream


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype and shape (``None`` for a dynamic dim)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


def sha256(source: str | os.PathLike | onnx.ModelProto | dict[str, np.ndarray]) -> str:
    """The SHA-256 of a file (its bytes), a ModelProto (serialized) or arrays (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    elif isinstance(source, onnx.ModelProto):
        if is_large(source):  # too large to serialize at once: the graph, then each tensor's bytes
            h.update(without_weights(source).SerializeToString())
            for t in source.graph.initializer:
                h.update(t.raw_data)
        else:
            for piece in stream.pieces(source):
                h.update(piece)
    else:
        for k in sorted(source):
            a = np.ascontiguousarray(source[k])
            h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def load_model(path: str | os.PathLike, external: bool = True) -> onnx.ModelProto:
    """Load an ONNX model with its external data (``external``; else the graph only); never
    modifies the file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: {'is a directory' if p.is_dir() else 'no such file'}")
    try:
        model = onnx.load(str(p), load_external_data=external)
    except (DecodeError, RuntimeError, ValueError, OSError, onnx.checker.ValidationError) as exc:  # (checker:
        # an external-data file that is missing)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{p}: not a readable ONNX model ({first})") from None
    if not model.graph.node:
        raise InputError(f"{p}: not an ONNX model (no graph nodes)")
    return model


#: a model whose weights pass this many bytes is written with external data and handed to ONNX
#: Runtime, the checker and shape inference through files or without its weights (protobuf
#: cannot serialize 2 GB)
LARGE_BYTES = 1_800_000_000


def weight_bytes(model: onnx.ModelProto) -> int:
    """The bytes of the model's initializers (their data in the proto)."""
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) + 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (
            len(t.int64_data) + len(t.double_data) + len(t.uint64_data))
    return total


def is_large(model: onnx.ModelProto) -> bool:
    return weight_bytes(model) > LARGE_BYTES


def check_finite_weights(model: onnx.ModelProto, source: str) -> None:
    """Raise :class:`InputError` naming the first float initializer that holds NaN or Inf (its
    statistics, matching and outputs would be NaN: a traceback deep in the zip, or wrong figures)."""
    for t in model.graph.initializer:
        if t.data_type in _FLOAT_TYPES:
            a = numpy_helper.to_array(t)
            if not np.isfinite(a).all():
                bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
                raise InputError(f"{source}: weight {t.name!r} holds {bad} NaN or Inf value(s) of {np.size(a)}")


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose initializers above 1 KB keep their type and dims but not their data (enough
    for shape inference), made without copying that data."""
    out = _without_initializers(model)
    for t in model.graph.initializer:
        light = out.graph.initializer.add()
        if len(t.raw_data) > 1024 or len(t.float_data) > 256:
            _copy_fields(t, light, skip=_DATA_FIELDS)
        else:
            light.CopyFrom(t)
    return out


#: a model with more weight bytes than this has its shapes inferred on a copy without them
SKELETON_BYTES = 64 << 20


def infer_shapes(model: onnx.ModelProto, **kwargs) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes``; a model of more than ``SKELETON_BYTES`` of weights (over
    the protobuf limit too) is inferred on a copy without them and gets the shapes itself, in
    place: the result is ``model`` (callers pass a model of their own and use the result). (onnx
    serializes the model and parses it back: 2-3 copies of a BERT-base pair's weights at once.)"""
    if weight_bytes(model) <= SKELETON_BYTES:
        return onnx.shape_inference.infer_shapes(model, **kwargs)
    inferred = onnx.shape_inference.infer_shapes(without_weights(model), **kwargs)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


def pruned(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """A model of only what ``outputs`` need: its nodes, initializers and inputs (ONNX Runtime
    runs every node of a graph whichever outputs are asked for)."""
    graph = model.graph
    need, nodes = set(outputs), []
    for node in reversed(graph.node):
        if any(o in need for o in node.output):
            nodes.append(node)
            need.update(_reads(node))
    out = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name,
                          producer_version=model.producer_version)
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    g = out.graph
    g.name = graph.name
    g.node.extend(reversed(nodes))
    g.initializer.extend(t for t in graph.initializer if t.name in need)
    g.input.extend(i for i in graph.input if i.name in need)
    g.output.extend(o for o in graph.output if o.name in outputs)
    g.value_info.extend(v for v in graph.value_info if v.name in need)
    return out


def _reads(node: onnx.NodeProto) -> list[str]:
    """The tensors a node reads, those its subgraphs read from the outer scope included."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        for sub in list(attr.g.node if attr.HasField("g") else []) + [n for g in attr.graphs for n in g.node]:
            names.extend(_reads(sub))
    return names


@contextmanager
def on_disk(model: onnx.ModelProto) -> Iterator[str]:
    """``model`` saved with external data in a temporary folder, for APIs that read files (ONNX
    Runtime, the full checker); ``model`` itself is left as it was."""
    folder = tempfile.mkdtemp(prefix="onnxzip-model-")
    try:
        path = os.path.join(folder, "model.onnx")
        _save_external(model, path, "model.onnx.data")
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


#: tensor fields that hold data (left out of an external-data skeleton)
_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _save_external(model: onnx.ModelProto, path: str, location: str) -> None:
    """Save with every initializer over 1 KB in ``location`` beside ``path`` (at 4 KB-aligned offsets,
    which ONNX Runtime can map), ``model`` untouched. (onnx's own writer moves the data out of the
    proto and back: protobuf's arena keeps both copies as long as the proto lives, measured +0.44 GB
    per write of a BERT-base model.)"""
    skeleton = _without_initializers(model)
    offset = 0
    with open(os.path.join(os.path.dirname(path), location), "wb") as f:
        for t in model.graph.initializer:
            light = skeleton.graph.initializer.add()
            data = t.raw_data if t.HasField("raw_data") else b""
            if not data and t.data_type != onnx.TensorProto.STRING and not t.external_data:
                data = numpy_helper.to_array(t).tobytes()
            if len(data) <= 1024 or t.external_data:
                light.CopyFrom(t)
                continue
            _copy_fields(t, light, skip=_DATA_FIELDS)
            f.write(b"\0" * (-offset % 4096))
            offset += -offset % 4096
            f.write(data)
            light.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(data)))):
                entry = light.external_data.add()
                entry.key, entry.value = key, value
            offset += len(data)
    with open(path, "wb") as f:
        f.write(skeleton.SerializeToString())


def _without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` but its graph's initializers (their data never copied)."""
    out = onnx.ModelProto()
    _copy_fields(model, out, skip="graph")
    _copy_fields(model.graph, out.graph, skip="initializer")
    return out


def _copy_fields(source, target, skip) -> None:
    """Every set field of protobuf message ``source`` into ``target``, but those named in ``skip``."""
    skip = (skip,) if isinstance(skip, str) else skip
    stream.copy_fields(source, target, lambda field: field.name not in skip)


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write ``model`` atomically: to a temporary file beside ``path``, then rename.

    Models over ``LARGE_BYTES`` keep their weights in ``<name>.<8 hex digits>.data`` beside the
    file: a new name per write, renamed into place before the model that names it (a reader never
    sees a model with another write's data); an earlier write's data file is removed after. The
    inferred shapes of inner tensors (``value_info``) are left out of the file, as exporters do:
    ONNX Runtime and TensorRT infer them again (on a small zipped model they were 13% of its bytes).
    """
    shapes = list(model.graph.value_info)
    del model.graph.value_info[:]
    try:
        _save(model, path)
    finally:
        model.graph.value_info.extend(shapes)


def _save(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if is_large(model):
        folder = tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent)
        data = f"{p.name}.{secrets.token_hex(4)}.data"
        try:
            _save_external(model, os.path.join(folder, p.name), data)
            _publish(os.path.join(folder, data), p.parent / data)
            _publish(os.path.join(folder, p.name), p)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        for old in p.parent.glob(f"{glob.escape(p.name)}.*.data"):
            if old.name != data and re.fullmatch(re.escape(p.name) + r"\.[0-9a-f]{8}\.data", old.name):
                old.unlink()
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            for piece in stream.pieces(model):
                f.write(piece)
        _publish(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _publish(tmp: str, path: Path) -> None:
    """Rename a finished temporary file into place, with the usual permissions (mkstemp: 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs excluded)."""
    inits = {i.name for i in model.graph.initializer}
    made = {o for n in model.graph.node for o in n.output}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits or vi.name in made:
            continue
        t = vi.type.tensor_type
        specs.append(InputSpec(vi.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), static_dims(vi)))
    return specs


def static_dims(vi: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    """A declared tensor's dimensions: sizes where static, None where named or unknown."""
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim)


def declared_dims(model: onnx.ModelProto) -> dict[str, tuple[int | str | None, ...]]:
    """Each graph input's dims as declared: a size, a dim name, or None (unknown)."""
    return {vi.name: tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                           for d in vi.type.tensor_type.shape.dim)
            for vi in model.graph.input if vi.type.HasField("tensor_type")}


def with_dims(model: onnx.ModelProto, dims: dict[str, dict[int, str | int]], copy: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` (``model`` itself with ``copy=False``) whose inputs take the dims ``dims``
    (input -> axis -> a name, or a size), with every inferred shape dropped (value_info, the outputs'
    dims) so that nothing keeps the old sizes."""
    out = model
    if copy:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    for vi in out.graph.input:
        for axis, name in dims.get(vi.name, {}).items():
            d = vi.type.tensor_type.shape.dim[axis]
            d.Clear()
            if isinstance(name, str):
                d.dim_param = name
            else:
                d.dim_value = int(name)
    del out.graph.value_info[:]
    for vi in out.graph.output:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            vi.type.tensor_type.ClearField("shape")
    return out


def fix_dynamic_dims(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose dynamic float input dims after the batch take the calibration
    data's sizes (the batch stays dynamic); ``model`` itself when nothing is to fix. Integer inputs
    (token ids, attention masks) keep a dynamic sequence length."""
    dynamic = [vi for vi in model.graph.input if vi.name in arrays and arrays[vi.name].dtype.kind == "f" and
               any(not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim[1:])]
    if not dynamic:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    names = {vi.name for vi in dynamic}
    for vi in out.graph.input:
        if vi.name in names:
            for d, n in zip(list(vi.type.tensor_type.shape.dim)[1:], arrays[vi.name].shape[1:]):
                if not d.HasField("dim_value"):
                    d.dim_value = int(n)
    return out


def check_output_path(output: str | os.PathLike, inputs: list[str | os.PathLike], flag: str = "-o",
                      others: list[str | os.PathLike] = ()) -> None:
    """Refuse, before any work, an output path (given as ``flag``) that is one of the inputs, another
    output (``others``), a directory, or one whose folder cannot be written (folders that do not exist
    yet are made when saving)."""
    if not str(output):
        raise InputError(f"{flag}: give a file name (an empty path was given)")
    out = Path(output).resolve()
    for src in inputs:
        if Path(src).resolve() == out:
            raise InputError(f"{flag} {output}: that is an input file; choose another {flag} path")
    for other in others:
        if Path(other).resolve() == out:
            raise InputError(f"{flag} {output}: that path is written already (the zipped model); choose another")
    if out.is_dir():
        raise InputError(f"{flag} {output}: is a directory; give a file name")
    if out.exists() and not out.is_file():  # (the atomic rename would replace a device or a pipe by a file)
        raise InputError(f"{flag} {output}: is not a regular file (a device, pipe or socket); give a file name")
    folder = out.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {output}: cannot write into {folder}")
    try:  # (permissions do not tell it all: a read-only mount, /proc)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".onnxzip-probe-"):
            pass
    except OSError as exc:
        raise InputError(f"{flag} {output}: cannot write into {folder} ({exc.strerror or exc})") from None


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.npz`` (every key) or ``.npy`` (key ``""``) file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: {'is a folder (give a .npz or .npy file here)' if p.is_dir() else 'no such file'}")
    try:
        if p.suffix == ".npy":
            return {"": np.load(p, allow_pickle=False)}
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # (a cut .npz: BadZipFile)
        why = "neither a .npz (zip) nor a .npy file" if "pickled" in str(exc) else str(exc) or type(exc).__name__
        raise InputError(f"{p}: not a readable .npz/.npy file ({why})") from None


def check_labels(labels: np.ndarray, classes: int | None, source: str, n: int | None = None) -> np.ndarray:
    """Class labels, one per sample: integers (or floats that are whole numbers) in [0, ``classes``)
    (``classes`` None: any count), ``n`` of them where given; int64."""
    labels = np.asarray(labels)
    where = f"in [0, {classes})" if classes is not None else "of 0 or more"
    if labels.ndim != 1 or (n is not None and len(labels) != n):
        raise InputError(f"{source}: labels have shape {labels.shape}; give one class index per sample"
                         + (f" ({n})" if n is not None else ""))
    if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise InputError(f"{source}: labels must be class indices, integers {where}; these are {labels.dtype}")
    if len(labels) and (labels.min() < 0 or (classes is not None and labels.max() >= classes)):
        raise InputError(f"{source}: labels must be class indices {where}; these run from {labels.min()} to "
                         f"{labels.max()}")
    return labels.astype(np.int64)


def load_calibration(path: str | os.PathLike, specs: list[InputSpec],
                     extra_keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Read calibration data for a model and check it against the model's inputs.

    Keys must be exactly the input names (a ``.npy`` file serves a single-input model) plus every
    key in ``extra_keys`` (labels, one entry per sample). Arrays have a leading batch axis, the same length
    for every input, finite values, the input's static dims, and the input's dtype kind
    (float data is cast to the input's float type).

    Returns:
        input name -> array (and the extra keys), batch first.
    """
    return check_calibration(load_arrays(path), specs, str(path), extra_keys)


def check_calibration(arrays: dict[str, np.ndarray], specs: list[InputSpec], source: str,
                      extra_keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Check calibration arrays (from a file or memory) against a model's inputs; see
    :func:`load_calibration`. ``source`` names them in messages."""
    path = source
    if list(arrays) == [""]:
        if len(specs) != 1:
            raise InputError(f"{path}: a .npy file serves one input; the model has {len(specs)}, use a .npz")
        arrays = {specs[0].name: arrays[""]}
    names = {s.name for s in specs}
    taken = sorted(names & set(extra_keys))
    if taken:
        raise InputError(f"{path}: --labels {taken[0]!r} names an input of the model, not its labels (the file "
                         f"has: {', '.join(sorted(arrays))})")
    missing = sorted(names - set(arrays))
    extra = sorted(set(arrays) - names - set(extra_keys))
    if missing:
        raise InputError(f"{path}: missing input {missing[0]!r} (the file has: {', '.join(sorted(arrays))})")
    if extra:
        hint = ""
        if extra_keys and any(k not in arrays for k in extra_keys):
            hint = f"; is it the labels? (--labels names {extra_keys[0]!r}, which the file lacks)"
        elif not extra_keys and "label" in extra[0].lower():
            hint = "; labels: zip, eval and finetune take them with --labels"
        raise InputError(f"{path}: key {extra[0]!r} is not a model input (inputs: {', '.join(sorted(names))}){hint}")
    out: dict[str, np.ndarray] = {}
    batch = None
    for s in specs:
        a = arrays[s.name]
        if a.ndim != len(s.shape) or any(d is not None and d != n for d, n in zip(s.shape[1:], a.shape[1:])):
            shape = ", ".join("?" if d is None else str(d) for d in s.shape)
            raise InputError(f"{path}: input {s.name!r} has shape {a.shape}, the model expects ({shape})")
        if a.dtype.kind != s.dtype.kind:
            raise InputError(f"{path}: input {s.name!r} has dtype {a.dtype}, the model expects {s.dtype}")
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise InputError(f"{path}: input {s.name!r} contains NaN or Inf")
        if batch is not None and a.shape[0] != batch:
            raise InputError(f"{path}: input {s.name!r} has {a.shape[0]} samples, other inputs {batch}")
        batch = a.shape[0]
        out[s.name] = np.ascontiguousarray(a, dtype=s.dtype)
    if batch == 0:
        raise InputError(f"{path}: no samples")
    for k in extra_keys:
        if k not in arrays:
            raise InputError(f"{path}: no labels key {k!r} (the file has: {', '.join(sorted(arrays))})")
        if len(arrays[k]) != batch:
            raise InputError(f"{path}: {k!r} has {len(arrays[k])} entries for {batch} samples")
        out[k] = arrays[k]
    return out
