"""A model's protobuf bytes written piece by piece: the same bytes as ``SerializeToString``, with
one weight's bytes in memory at a time instead of the whole model's (a BERT-base pair's zipped
model: 0.8 GB more at its save and at its hash).

Protobuf writes a message's fields in field-number order, a nested message as its tag, its length
and its bytes. The model's fields before ``graph`` (7), the graph's fields before ``initializer``
(5), each initializer, the graph's later fields and the model's later fields are serialized one
after another; the graph's length is summed from theirs (``ByteSize`` of the whole graph serializes it).
"""
from __future__ import annotations

from typing import Callable, Iterator

import onnx

_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_INITIALIZER = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number


def pieces(model: onnx.ModelProto) -> Iterator[bytes]:
    """The bytes of ``model.SerializeToString()``, in pieces of at most one initializer each."""
    if not model.HasField("graph"):
        yield model.SerializeToString()
        return
    graph = model.graph
    head, tail = _fields(graph, lambda n: n < _INITIALIZER), _fields(graph, lambda n: n > _INITIALIZER)
    sizes = [t.ByteSize() for t in graph.initializer]  # (one tensor at a time: ByteSize serializes)
    tag = _varint(_INITIALIZER << 3 | 2)
    yield _fields(model, lambda n: n < _GRAPH)
    yield _varint(_GRAPH << 3 | 2) + _varint(len(head) + len(tail) + sum(len(tag) + len(_varint(n)) + n for n in sizes))
    yield head
    for t, size in zip(graph.initializer, sizes):
        yield tag + _varint(size)
        yield t.SerializeToString()
    yield tail
    yield _fields(model, lambda n: n > _GRAPH)


def _fields(message, keep: Callable[[int], bool]) -> bytes:
    """The serialized bytes of ``message``'s set fields whose numbers ``keep`` takes."""
    part = type(message)()
    copy_fields(message, part, lambda field: keep(field.number))
    return part.SerializeToString()


def copy_fields(source, target, keep: Callable) -> None:
    """Every set field of protobuf message ``source`` that ``keep(field descriptor)`` takes into ``target``."""
    for field, value in source.ListFields():
        if not keep(field):
            continue
        if field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED:
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
